"""Rebuilding broker state from its journal, and writing state as a snapshot.

``replay(records)`` folds journal records (``_journal`` ops) into plain
models; ``restore(broker, recovered, state_dir)`` loads them into a fresh
broker's pubsub, jobs and KV state, copying each owed payload region from
the store file the journal names (or, for a kept batch, from the arena
segment the dead broker left) into the broker's new one (which also
compacts the store, and lets ``--store-size`` change between starts);
``snapshot(broker)`` yields records that rebuild the broker's current state
(the start of a compacted journal). What a restart promises:

* every durable with its pattern and ack_wait; every message it has not
  acked (pending or unacked when the broker died) is pending again, in
  sequence order, its delivery count kept (so the next delivery says
  redelivered); publish sequences continue after the highest stored one;
* every job in its state with its attempts: ready; delayed until its due
  time; claimed, kept for its holder when that process (pid and start time)
  still runs, else ended as "worker gone" (an attempt, as for a death seen
  live); dead letters with payload, attempts and reason; fencing tokens
  never go back;
* every KV value with its revision; buckets' revisions keep increasing;
  leases whose holder still runs (pid and start time) are kept for it, the
  rest end; lease tokens never go back.

Not kept: nak delays of messages (they are pending again at once), claim and
lease deadlines (a kept claim or lease gets its full TTL again from the
restart), and whatever no client was told of (parked publishes, enqueues
waiting for room). A payload region whose crc32 (kept for a store on disk)
does not match, or whose store file or arena segment is gone, loses its
messages, and the log says how many.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import mmap
import operator
import os
import time
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._values import DEFAULT_MAX_ATTEMPTS
from ..layout import ARENA_MAGIC, ARENA_VERSION, HEADER_SIZE, SLOT, LayoutError, open_store
from ..layout._header import check_header
from ..protocol._frames import MSG_DESC, PUB_DESC
from . import _journal as J
from ._leases import holder_alive
from ._pubsub import Block, Consumer, Message
from ._segments import SHM_DIR, map_readonly

if TYPE_CHECKING:
    from ._broker import Broker

__all__ = ["STORE_FILE", "Recovered", "RecoveryError", "replay", "restore", "snapshot"]

log = logging.getLogger("klieo.shmd")

_SNAPSHOT_CHUNK = 1000
"""Most jobs per snapshot record."""
_CHUNK_BYTES = 64 << 20
"""Most payload bytes per snapshot record (far below the format's MAX_RECORD)."""
STORE_FILE = "store"
"""Store files in a state directory are named ``store.<hex>``."""


class RecoveryError(RuntimeError):
    """The journal's state does not fit this broker (e.g. a smaller store)."""


@dataclass
class _Durable:
    pattern: str
    ack_wait: float
    live: dict[int, int] = field(default_factory=dict)  # seq -> deliveries so far


@dataclass
class _Queue:
    tokens: int = 0
    # id -> [payload, dedup, max_attempts, attempts, claim or None, due]
    # claim: (pid, start, ttl, token); due: wall clock of a delayed job, 0 if ready
    jobs: dict[str, list[Any]] = field(default_factory=dict)
    # id -> [payload, attempts, reason, dedup, max_attempts]
    dead: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Recovered:
    """What ``replay`` found (plain data; nothing mapped or allocated)."""

    records: int = 0
    seq: int = 0
    store: str | None = None  # the store file's name in the state directory
    durables: dict[str, _Durable] = field(default_factory=dict)
    # first seq -> (off, span, crc32 or -1, descs, subjects, arena segment or None)
    batches: dict[int, tuple[int, int, int, bytes, bytes, str | None]] = field(default_factory=dict)
    queues: dict[str, _Queue] = field(default_factory=dict)
    kv: dict[tuple[str, str], tuple[bytes | None, int]] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    leases: dict[tuple[str, str], tuple[int, int, float, float]] = field(default_factory=dict)
    lease_tokens: dict[tuple[str, str], int] = field(default_factory=dict)


# --- replay ------------------------------------------------------------------------
def replay(records: list[Any]) -> Recovered:
    """Fold ``records`` in order; records naming something that no longer
    exists (an ack for a deleted durable, say) change nothing."""
    r = Recovered(records=len(records))
    for rec in records:
        _APPLY[rec[0]](r, rec)
    return r


def _seq(r: Recovered, rec: list[Any]) -> None:
    r.seq = max(r.seq, rec[1])


def _durable(r: Recovered, rec: list[Any]) -> None:
    _, name, pattern, ack_wait = rec
    d = r.durables.get(name)
    if d is None:
        r.durables[name] = _Durable(pattern, ack_wait)
    else:
        d.ack_wait = ack_wait


def _durable_del(r: Recovered, rec: list[Any]) -> None:
    r.durables.pop(rec[1], None)


def _store(r: Recovered, rec: list[Any]) -> None:
    r.store = rec[1]


def _publish(r: Recovered, rec: list[Any]) -> None:
    _, first, descs, subjects, routes, route_of, off, span, crc, *arena = rec
    r.batches[first] = (off, span, crc, descs, subjects, arena[0] if arena else None)
    targets = [[r.durables.get(name) for name in names] for names in routes]
    idx = array("H")
    idx.frombytes(route_of)
    for i, ri in enumerate(idx):
        for d in targets[ri]:
            if d is not None:
                d.live[first + i] = 0
    r.seq = max(r.seq, first + len(idx) - 1)


def _moved(r: Recovered, rec: list[Any]) -> None:
    _, first, off, crc = rec
    batch = r.batches.get(first)
    if batch is not None:
        r.batches[first] = (off, batch[1], crc, batch[3], batch[4], None)


def _seqs(data: bytes) -> array[int]:
    a = array("q")
    a.frombytes(data)
    return a


def _delivered(r: Recovered, rec: list[Any]) -> None:
    d = r.durables.get(rec[1])
    if d is not None:
        live = d.live
        for seq in _seqs(rec[2]):
            if seq in live:
                live[seq] += 1


def _acked(r: Recovered, rec: list[Any]) -> None:
    d = r.durables.get(rec[1])
    if d is not None:
        pop = d.live.pop
        for seq in _seqs(rec[2]):
            pop(seq, None)


def _counts(r: Recovered, rec: list[Any]) -> None:
    d = r.durables.get(rec[1])
    if d is not None:
        for seq, n in zip(_seqs(rec[2]), _seqs(rec[3]), strict=True):
            if seq in d.live:
                d.live[seq] = n


def _queue(r: Recovered, name: str) -> _Queue:
    q = r.queues.get(name)
    if q is None:
        q = r.queues[name] = _Queue()
    return q


def _job_add(r: Recovered, rec: list[Any]) -> None:
    _, name, ids, payloads, options = rec
    jobs = _queue(r, name).jobs
    for job_id, payload in zip(ids, payloads, strict=True):
        jobs[job_id] = [payload, None, DEFAULT_MAX_ATTEMPTS, 0, None, 0.0]
    for i, dedup, max_attempts, attempts in options:
        job = jobs[ids[i]]
        job[1], job[2], job[3] = dedup, max_attempts, attempts


def _job_claim(r: Recovered, rec: list[Any]) -> None:
    if len(rec) == 6:  # journal versions 4 and 5: a list per claim
        _, name, pid, start, ttl, claims = rec
    else:
        _, name, pid, start, ttl, ids, first, attempts = rec
        counts = itertools.repeat(attempts) if type(attempts) is int else attempts
        claims = zip(ids, itertools.count(first), counts)
    q = _queue(r, name)
    for job_id, token, attempts in claims:
        job = q.jobs.get(job_id)
        if job is not None:
            job[3] = attempts
            job[4] = (pid, start, ttl, token)
            job[5] = 0.0
        q.tokens = max(q.tokens, token)


def _job_ack(r: Recovered, rec: list[Any]) -> None:
    jobs = _queue(r, rec[1]).jobs
    for job_id in rec[2]:
        jobs.pop(job_id, None)


def _job_ready(r: Recovered, rec: list[Any]) -> None:
    _, name, job_id, attempts, due = rec
    q = _queue(r, name)
    job = q.jobs.pop(job_id, None)
    if job is not None:
        job[3], job[4], job[5] = attempts, None, due
        q.jobs[job_id] = job  # to the end: the order it became ready in


def _job_dead(r: Recovered, rec: list[Any]) -> None:
    _, name, job_id, reason, attempts = rec
    q = _queue(r, name)
    job = q.jobs.pop(job_id, None)
    if job is not None:
        q.dead[job_id] = [job[0], attempts, reason, job[1], job[2]]


def _job_requeue(r: Recovered, rec: list[Any]) -> None:
    q = _queue(r, rec[1])
    d = q.dead.pop(rec[2], None)
    if d is not None:
        q.jobs[rec[2]] = [d[0], d[3], d[4], 0, None, 0.0]


def _job_discard(r: Recovered, rec: list[Any]) -> None:
    _queue(r, rec[1]).dead.pop(rec[2], None)


def _job_tokens(r: Recovered, rec: list[Any]) -> None:
    q = _queue(r, rec[1])
    q.tokens = max(q.tokens, rec[2])


def _job_letter(r: Recovered, rec: list[Any]) -> None:
    _, name, job_id, payload, attempts, reason, dedup, max_attempts = rec
    _queue(r, name).dead[job_id] = [payload, attempts, reason, dedup, max_attempts]


def _kv_put(r: Recovered, rec: list[Any]) -> None:
    _, bucket, key, value, rev = rec
    r.kv[(bucket, key)] = (value, rev)
    r.revisions[bucket] = max(r.revisions.get(bucket, 0), rev)


def _kv_del(r: Recovered, rec: list[Any]) -> None:
    _, bucket, key, rev = rec
    r.kv[(bucket, key)] = (None, rev)
    r.revisions[bucket] = max(r.revisions.get(bucket, 0), rev)


def _kv_rev(r: Recovered, rec: list[Any]) -> None:
    r.revisions[rec[1]] = max(r.revisions.get(rec[1], 0), rec[2])


def _lease(r: Recovered, rec: list[Any]) -> None:
    _, bucket, key, token, pid, start, ttl = rec
    k = (bucket, key)
    r.leases[k] = (token, pid, start, ttl)
    r.lease_tokens[k] = max(r.lease_tokens.get(k, 0), token)


def _lease_end(r: Recovered, rec: list[Any]) -> None:
    k = (rec[1], rec[2])
    held = r.leases.get(k)
    if held is not None and held[0] == rec[3]:
        del r.leases[k]


def _lease_token(r: Recovered, rec: list[Any]) -> None:
    k = (rec[1], rec[2])
    r.lease_tokens[k] = max(r.lease_tokens.get(k, 0), rec[3])


_APPLY = {
    J.SEQ: _seq,
    J.DURABLE: _durable,
    J.DURABLE_DEL: _durable_del,
    J.PUBLISH: _publish,
    J.DELIVERED: _delivered,
    J.ACKED: _acked,
    J.COUNTS: _counts,
    J.JOB_ADD: _job_add,
    J.JOB_CLAIM: _job_claim,
    J.JOB_ACK: _job_ack,
    J.JOB_READY: _job_ready,
    J.JOB_DEAD: _job_dead,
    J.JOB_REQUEUE: _job_requeue,
    J.JOB_DISCARD: _job_discard,
    J.JOB_TOKENS: _job_tokens,
    J.JOB_LETTER: _job_letter,
    J.KV_PUT: _kv_put,
    J.KV_DEL: _kv_del,
    J.KV_REV: _kv_rev,
    J.LEASE: _lease,
    J.LEASE_END: _lease_end,
    J.LEASE_TOKEN: _lease_token,
    J.STORE: _store,
    J.MOVED: _moved,
}


# --- restore -----------------------------------------------------------------------
def restore(b: Broker, r: Recovered, state_dir: str) -> None:
    """Load ``r`` into ``b``, a broker with no clients yet and no journal
    attached (so nothing here is journalled twice); payloads come from the
    store file ``r`` names in ``state_dir``."""
    now = b.clock()
    _restore_pubsub(b, r, state_dir)
    _restore_kv(b, r, now)
    b.pubsub.keep_meta = True  # dead letters published here go into the snapshot
    try:
        _restore_jobs(b, r, now)
    finally:
        b.pubsub.keep_meta = False


def _old_store(r: Recovered, state_dir: str) -> tuple[mmap.mmap | None, memoryview | None]:
    """The data area of the store file ``r`` names (and its map), or None."""
    if r.store is None:
        return None, None
    return _map_data(os.path.join(state_dir, r.store), "store file", open_store)


def _arena_data(whole: memoryview) -> memoryview:
    """The data area of an arena left by an earlier broker: of this version,
    or of version 2 (the same data area, before the read mark)."""
    try:
        size = check_header(whole, ARENA_MAGIC, ARENA_VERSION)
    except LayoutError:
        size = check_header(whole, ARENA_MAGIC, 2)  # raises for any other version
    return whole[HEADER_SIZE : HEADER_SIZE + size]


def _map_data(
    path: str, what: str, data_of: Callable[[memoryview], memoryview]
) -> tuple[mmap.mmap | None, memoryview | None]:
    """Map the file at ``path`` read-only; return the map and ``data_of``
    the whole (which checks its header), or two Nones, the reason logged."""
    try:
        m = map_readonly(path)
    except (OSError, ValueError) as exc:  # ValueError: an empty file
        log.error("cannot map the %s %s: %s", what, path, exc)
        return None, None
    whole = memoryview(m)
    try:
        return m, data_of(whole)
    except LayoutError as exc:
        log.error("%s %s: %s", what, path, exc)
        whole.release()
        m.close()
        return None, None


def _restore_pubsub(b: Broker, r: Recovered, state_dir: str) -> None:
    owed = _owed(b, r)
    if not owed:
        b.pubsub._usage()
        return
    m, old = _old_store(r, state_dir)
    arenas = _OldArenas()
    try:
        _copy_owed(b, r, owed, old, arenas)
    finally:
        arenas.close()
        with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps
            if old is not None:
                old.release()
            if m is not None:
                m.close()


class _OldArenas:
    """The data areas of the arena segments a dead broker left (kept
    batches live there), each mapped read-only on first use."""

    def __init__(self) -> None:
        self._maps: dict[str, tuple[mmap.mmap, memoryview] | None] = {}

    def data(self, name: str) -> memoryview | None:
        """``name``'s data area, or None if it is gone or not an arena."""
        if name not in self._maps:
            m, data = _map_data(SHM_DIR + name, "arena segment", _arena_data)
            self._maps[name] = None if m is None or data is None else (m, data)
        got = self._maps[name]
        return None if got is None else got[1]

    def close(self) -> None:
        for got in self._maps.values():
            if got is not None:
                with contextlib.suppress(BufferError):
                    got[1].release()
                    got[0].close()
        self._maps.clear()


def _owed(b: Broker, r: Recovered) -> dict[int, dict[int, list[tuple[Consumer, int]]]]:
    """Create the durables; return, per batch (first seq), per seq, the
    durables that still owe the message and its delivery count."""
    ps = b.pubsub
    ps.seq = r.seq
    consumers: list[tuple[str, _Durable, Consumer]] = []
    for name, d in r.durables.items():
        c = Consumer(name, d.pattern, d.ack_wait)
        ps.consumers[name] = c
        consumers.append((name, d, c))
    ps.routes.clear()
    # which durables still owe each message, grouped by batch (first seq)
    firsts = sorted(r.batches)
    owed: dict[int, dict[int, list[tuple[Consumer, int]]]] = {}
    for _, d, c in consumers:
        for seq, count in d.live.items():
            i = bisect_right(firsts, seq) - 1
            if i < 0:
                continue  # not stored (cannot happen with an intact journal)
            owed.setdefault(firsts[i], {}).setdefault(seq, []).append((c, count))
    for _, _, c in consumers:
        ps.dirty.add(c)
    return owed


def _copy_owed(
    b: Broker,
    r: Recovered,
    owed: dict[int, dict[int, list[tuple[Consumer, int]]]],
    old: memoryview | None,
    arenas: _OldArenas,
) -> None:
    ps = b.pubsub
    lost = 0
    for first in sorted(owed):
        old_off, span, crc, descs, subjects, arena = r.batches[first]
        by_seq = owed[first]
        region = None
        src = old if arena is None else arenas.data(arena)
        if src is not None and old_off + span <= len(src):
            region = src[old_off : old_off + span]
            if crc != -1 and zlib.crc32(region) != crc:
                region = None
        if region is None:
            lost += len(by_seq)
            continue
        refs = sum(map(len, by_seq.values()))
        off = ps.alloc.alloc(span)
        if off is None:
            raise RecoveryError(
                f"the journal holds more pending payload than --store-size "
                f"{ps.alloc.size} bytes takes; restart with a bigger store"
            )
        ps.store[off : off + span] = region
        del region
        block = Block(off, refs, span, first, descs, subjects)
        base = off - SLOT.size
        pos = 0
        for i, (rel, hl, pl, sl) in enumerate(PUB_DESC.iter_unpack(descs)):
            subj = subjects[pos : pos + sl]
            pos += sl
            takers = by_seq.get(first + i)
            if not takers:
                continue
            seq = first + i
            msg = (seq, subj, MSG_DESC.pack(seq, base + rel, hl, pl, sl), block, hl + pl)
            for c, count in takers:
                c.pending.append(msg)
                if count:
                    c.counts[seq] = count
    if lost:
        log.error(
            "%d messages are lost: their payloads are not intact in the store file %s "
            "or the arenas of the stopped broker",
            lost,
            r.store,
        )
    ps._usage()


def _restore_kv(b: Broker, r: Recovered, now: float) -> None:
    kv = b.kv
    for (bucket, key), (value, rev) in r.kv.items():
        if value is not None:
            kv._store(bucket, key, value, rev)
    kv.revisions.update(r.revisions)
    leases = kv.leases
    leases.tokens.update(r.lease_tokens)
    for (bucket, key), (token, pid, start, ttl) in r.leases.items():
        if holder_alive(pid, start):
            leases.adopt(bucket, key, token, pid, start, ttl, now)


def _restore_jobs(b: Broker, r: Recovered, now: float) -> None:
    from ._jobs import _CLAIMED, _DELAYED, _Job

    js = b.jobs
    wall = time.time()
    for name, rq in r.queues.items():
        q = js.queue(name)
        q.tokens = max(q.tokens, rq.tokens)
        q.dead.update(rq.dead)
        ended: list[_Job] = []
        for job_id, (payload, dedup, max_attempts, attempts, claim, due) in rq.jobs.items():
            job = _Job(q, job_id, payload, dedup, max_attempts)
            job.attempts = attempts
            q.jobs[job_id] = job
            js.live += 1
            js.live_bytes += len(payload)
            if claim is not None:
                pid, start, ttl, token = claim
                job.state = _CLAIMED
                job.token = token
                job.ttl = ttl
                job.deadline = now + ttl
                if holder_alive(pid, start):
                    job.holder = (pid, start)
                    js.orphans.add(job)
                    heapq.heappush(js._leases, (job.deadline, next(js._tie), [job]))
                else:
                    ended.append(job)
            elif due > wall:
                job.state = _DELAYED
                q.delayed += 1
                heapq.heappush(js._delayed, (now + (due - wall), next(js._tie), job))
            else:
                q.ready.append(job)
        for job in ended:
            js._end(job, "worker gone", 0.0, now)


# --- snapshot ----------------------------------------------------------------------
def snapshot(b: Broker) -> Iterator[J.Record]:
    """Records that rebuild ``b``'s state (see the module docstring)."""
    for rec in itertools.chain(_snapshot_pubsub(b), _snapshot_kv(b), _snapshot_jobs(b)):
        yield rec if type(rec) is tuple else (rec, b"")


_SEQ_OF = operator.itemgetter(0)
_BLOCK_OF = operator.itemgetter(3)
_FIRST_OF = operator.attrgetter("first")


def _routes(block: Block, owed: dict[str, list[int]]) -> tuple[list[list[str]], bytes]:
    """A ``PUBLISH`` record's routes (lists of durable names) and, per
    message of ``block``, the index of its route (``array("H")`` bytes);
    ``owed`` gives the sequences of ``block`` each durable still owes."""
    n = len(block.descs) // PUB_DESC.size
    if all(len(seqs) == n and len(set(seqs)) == n for seqs in owed.values()):
        return [[], list(owed)], (array("H", [1]) * n).tobytes()  # all owe all of it
    by_seq: dict[int, list[str]] = {}
    for name, seqs in owed.items():
        for seq in seqs:
            by_seq.setdefault(seq, []).append(name)
    table: dict[tuple[str, ...], int] = {(): 0}
    routes: list[list[str]] = [[]]
    route_of = array("H")
    for seq in range(block.first, block.first + n):
        names = tuple(by_seq.get(seq, ()))
        i = table.get(names)
        if i is None:
            i = table[names] = len(routes)
            routes.append(list(names))
        route_of.append(i)
    return routes, route_of.tobytes()


def _snapshot_pubsub(b: Broker) -> Iterator[Any]:
    ps = b.pubsub
    yield [J.STORE, os.path.basename(b.store_seg.name)]
    yield [J.SEQ, ps.seq]
    live = ps.consumers
    owed: dict[Block, dict[str, list[int]]] = {}  # block -> durable -> sequences it owes
    counts: dict[str, dict[int, int]] = {}

    def add_run(name: str, msgs: Iterable[Message]) -> None:
        # runs of one block are grouped and their sequences taken at C speed:
        # a backlog of a million pending messages is snapshotted in well under
        # a second, with the broker answering nobody meanwhile
        for block, run in itertools.groupby(msgs, _BLOCK_OF):
            per = owed.get(block)
            if per is None:
                per = owed[block] = {}
            seqs = per.get(name)
            if seqs is None:
                per[name] = list(map(_SEQ_OF, run))
            else:
                seqs.extend(map(_SEQ_OF, run))

    def add_one(c: Consumer, msg: Message, count: int) -> None:
        if live.get(c.name) is not c:
            return  # a deleted durable's leftovers
        add_run(c.name, (msg,))
        if count:
            counts.setdefault(c.name, {})[msg[0]] = count

    for name, c in live.items():
        yield [J.DURABLE, name, c.pattern, c.ack_wait]
        add_run(name, c.pending)
        if c.counts:
            for msg in c.pending:
                count = c.counts.get(msg[0], 0)
                if count:
                    counts.setdefault(name, {})[msg[0]] = count
    for _, _, c, msg, dcount in ps._delayed:
        add_one(c, msg, dcount)
    for s in b.sessions.values():
        for m, msg, _, dcount in s.deliveries.values():
            add_one(m.consumer, msg, dcount)
    for block in sorted(owed, key=_FIRST_OF):
        routes, route_of = _routes(block, owed[block])
        yield [
            J.PUBLISH,
            block.first,
            block.descs,
            block.subjects,
            routes,
            route_of,
            block.off,
            block.span,
            -1 if block.src is not None else ps.crc(block.off, block.span),
            block.src.name if block.src is not None else None,
        ]
    for name, seen in counts.items():
        seqs = sorted(seen)
        yield [
            J.COUNTS,
            name,
            array("q", seqs).tobytes(),
            array("q", [seen[s] for s in seqs]).tobytes(),
        ]


def _snapshot_kv(b: Broker) -> Iterator[list[Any]]:
    kv = b.kv
    for bucket, rev in kv.revisions.items():
        yield [J.KV_REV, bucket, rev]
    dead = kv._dead
    for bucket, key, value, rev in kv.table.items():
        if (bucket, key) not in dead:
            yield [J.KV_PUT, bucket, key, value, rev]
    leases = kv.leases
    for (bucket, key), token in leases.tokens.items():
        yield [J.LEASE_TOKEN, bucket, key, token]
    for (bucket, key), g in leases.grants.items():
        yield [J.LEASE, bucket, key, g.token, g.pid, g.start_time, g.ttl]


def _snapshot_jobs(b: Broker) -> Iterator[list[Any]]:
    from ._jobs import _CLAIMED, _DELAYED, job_add_record

    js = b.jobs
    now = b.clock()
    wall = time.time()
    due = {id(job): d for d, _, job in js._delayed if job.state == _DELAYED}
    for name, q in js.queues.items():
        yield [J.JOB_TOKENS, name, q.tokens]
        ready = list(q.ready)
        ready_ids = {id(j) for j in ready}
        others = [j for j in q.jobs.values() if id(j) not in ready_ids]
        jobs = ready + others
        chunk: list[Any] = []
        size = 0
        for j in jobs:  # records of at most 1000 jobs or 64 MiB of payloads
            if chunk and (len(chunk) >= _SNAPSHOT_CHUNK or size + len(j.payload) > _CHUNK_BYTES):
                yield job_add_record(name, chunk)
                chunk, size = [], 0
            chunk.append(j)
            size += len(j.payload)
        if chunk:
            yield job_add_record(name, chunk)
        for j in others:
            if j.state == _CLAIMED:
                if j.session is not None:
                    pid, start = j.session.pid, j.session.start_time
                elif j.holder is not None:
                    pid, start = j.holder
                else:
                    continue
                yield [J.JOB_CLAIM, name, pid, start, j.ttl, [j.id], j.token, j.attempts]
            elif j.state == _DELAYED:
                at = due.get(id(j), now)
                yield [J.JOB_READY, name, j.id, j.attempts, wall + max(0.0, at - now)]
        for job_id, (payload, attempts, reason, dedup, max_attempts) in q.dead.items():
            yield [J.JOB_LETTER, name, job_id, payload, attempts, reason, dedup, max_attempts]
