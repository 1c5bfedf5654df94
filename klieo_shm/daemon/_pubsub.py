"""The broker's pubsub state: durable consumers, deliveries, acks, redelivery.

Single writer: only the broker's event loop touches anything here. Nothing
here does I/O; events to send go through ``Session.send``.

Data model (chosen so the per-message cost is a few C-level operations):

* a *block* is one publish batch copied from a client's arena into the
  store -- or, when kept (``_kept``), left where it lies in the arena --
  freed when its reference count (message x matching durable) drops to zero;
* a *message* is a tuple ``(seq, subject, desc, block, size)`` where ``desc`` is
  its ``MSG_DESC`` packed once; one tuple is shared by every durable it
  matched, and every delivery frame reuses ``desc``;
* a *delivery* is a tuple ``(member, message, deadline, delivery_count)``
  stored in the receiving session's ``deliveries`` under a per-session,
  increasing delivery id, which acks name (in ranges).
"""

from __future__ import annotations

import heapq
import itertools
import operator
import zlib
from array import array
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._errors import InvalidArgument, NotFound
from .._names import subject_matches, validate_subject
from ..layout import SLOT, BuddyAllocator, check_slot, publish_usage, read_mark
from ..protocol import (
    ACK_KIND_NAK,
    ACK_KIND_PROGRESS,
    PUBACK_FULL,
    PUBACK_KEPT,
    PUBACK_OK,
    ArenaGone,
    DeliverBatch,
    PubAck,
    PublishBatch,
    Release,
    RemoteProtocolError,
    StreamEnd,
)
from ..protocol._frames import COUNT, MSG_DESC, PUB_DESC, pack_rows
from ._journal import ACKED, DELIVERED, DURABLE, DURABLE_DEL, MOVED, PUBLISH
from ._kept import Source
from ._segments import Segment

if TYPE_CHECKING:
    from ._broker import Session
    from ._config import BrokerConfig
    from ._journal import Journal

__all__ = ["Block", "Consumer", "Member", "PubsubState"]

CHUNK: Final = 128
"""Most messages in one delivery frame."""
_ROUTE_CACHE_MAX: Final = 65536
_FIRST = operator.attrgetter("first")
MAX_PARKED: Final = 65536
"""Most publish batches of one client waiting for storage (a bound on the
broker memory a client can pin; each waiting batch also pins arena room)."""

Message = tuple[int, bytes, bytes, "Block", int]
"""(seq, subject, packed MSG_DESC, block, header + payload bytes)."""
_Columns = tuple[tuple[int, ...], ...]  # a batch's descriptors transposed: rels, hls, pls, sls
_Routed = tuple[list[bytes], list[list["Consumer"]], _Columns | None]


class Block:
    """One publish batch in the store, or kept in the arena of ``src``;
    freed (released) when ``refs`` reaches 0. ``span`` bytes at ``off`` (in
    the store, or in ``src``'s data area) hold the batch's region after its
    slot header; ``descs`` (packed ``PUB_DESC``) and ``subjects`` describe
    its messages, the first of which got sequence ``first`` (kept for
    journal snapshots); ``batch_no`` is the publisher's (for ``Release``)."""

    __slots__ = ("batch_no", "descs", "first", "off", "refs", "span", "src", "subjects")

    def __init__(
        self,
        off: int,
        refs: int,
        span: int = 0,
        first: int = 0,
        descs: bytes = b"",
        subjects: bytes = b"",
        src: Source | None = None,
        batch_no: int = 0,
    ) -> None:
        self.off = off
        self.refs = refs
        self.span = span
        self.first = first
        self.descs = descs
        self.subjects = subjects
        self.src = src
        self.batch_no = batch_no


class Member:
    """One subscribe of a session to a durable (one ``MsgStream``)."""

    __slots__ = ("consumer", "inflight", "inflight_bytes", "session", "sub_id")

    def __init__(self, session: Session, sub_id: int, consumer: Consumer) -> None:
        self.session = session
        self.sub_id = sub_id
        self.consumer = consumer
        self.inflight = 0
        self.inflight_bytes = 0  # header + payload bytes of those deliveries


class Consumer:
    """A durable consumer: a subject pattern and the messages it owes."""

    __slots__ = (
        "ack_wait",
        "counts",
        "members",
        "name",
        "outstanding",
        "pattern",
        "pending",
        "redelivered",
        "rr",
        "timers",
    )

    def __init__(self, name: str, pattern: str, ack_wait: float) -> None:
        self.name = name
        self.pattern = pattern
        self.ack_wait = ack_wait
        self.pending: deque[Message] = deque()
        self.counts: dict[int, int] = {}  # seq -> deliveries so far (only if > 1)
        self.members: list[Member] = []
        self.rr = 0
        self.outstanding = 0
        self.redelivered = 0  # deliveries with delivery_count > 1, for status
        # (deadline, session, first delivery id, last delivery id), deadline order
        # A heap: ack_wait may change, so deadlines need not arrive in order.
        self.timers: list[tuple[float, int, Session, int, int]] = []


class PubsubState:
    """Every durable consumer and the payload store's allocation."""

    def __init__(
        self,
        config: BrokerConfig,
        store: memoryview,
        store_seg: memoryview,
        retire: Callable[[Segment, int, float], None],
    ) -> None:
        """``retire``: what becomes of an arena no client and no kept batch
        uses any more (the segment, and the pid and start time of the
        process it was for)."""
        self.config = config
        self.store = store
        self._store_seg = store_seg
        self.alloc = BuddyAllocator(len(store))
        self.consumers: dict[str, Consumer] = {}
        self.routes: dict[bytes, list[Consumer]] = {}
        self.seq = 0
        self.dirty: set[Consumer] = set()
        self.parked: set[Session] = set()
        self._delayed: list[tuple[float, int, Consumer, Message, int]] = []
        self._tie = itertools.count()
        self.journal: Journal | None = None
        # blocks keep what a snapshot needs even with no journal attached (set
        # while a journal's state is restored: dead letters published then)
        self.keep_meta = False
        # journalled publishes carry a crc32 of their region (a store on disk)
        self.checksum = False
        # blocks freed while a journal is attached, reused once the records
        # that freed them are written (see reclaim)
        self._freed: list[int] = []
        self._retiring: list[Source] = []  # arenas, likewise (see _drop_source)
        # kept batches: the smallest region kept (0: none), the arenas
        # (client id -> Source, orphans included), every client (for ArenaGone)
        self.keep_min = config.keep_min
        self.kept_bytes = 0  # store bytes the kept blocks would take (buddy blocks)
        self.sources: dict[int, Source] = {}
        self.sessions: dict[int, Session] = {}
        self.retire = retire

    # --- durables ------------------------------------------------------------
    def subscribe(
        self, s: Session, sub_id: int, pattern: str, durable: str, ack_wait: float | None
    ) -> None:
        if sub_id in s.members:
            raise InvalidArgument("sub_id", sub_id, "already in use on this connection")
        c = self.consumers.get(durable)
        if c is None:
            c = Consumer(durable, pattern, ack_wait if ack_wait is not None else 30.0)
            self.consumers[durable] = c
            self.routes.clear()
            if self.journal is not None:
                self.journal.append([DURABLE, durable, pattern, c.ack_wait])
        elif c.pattern != pattern:
            raise InvalidArgument(
                "subject", pattern, f"durable {durable!r} already consumes {c.pattern!r}"
            )
        elif ack_wait is not None and ack_wait != c.ack_wait:
            c.ack_wait = ack_wait
            if self.journal is not None:
                self.journal.append([DURABLE, durable, pattern, ack_wait])
        m = Member(s, sub_id, c)
        c.members.append(m)
        s.members[sub_id] = m
        self.dirty.add(c)

    def unsubscribe(self, s: Session, sub_id: int, now: float) -> None:
        m = s.members.pop(sub_id, None)
        if m is None:
            raise NotFound("subscription", str(sub_id))
        self._leave(m)

    def _leave(self, m: Member) -> None:
        """Remove a member; its unacked deliveries go back to the front at once."""
        c = m.consumer
        if m in c.members:
            c.members.remove(m)
        if m.inflight:
            deliveries = m.session.deliveries
            mine = [did for did, rec in deliveries.items() if rec[0] is m]
            back = []
            for did in mine:
                rec = deliveries.pop(did)
                back.append((rec[1], rec[3]))
            back.sort(key=lambda x: x[0][0])
            for msg, dcount in reversed(back):
                c.pending.appendleft(msg)
                c.counts[msg[0]] = dcount
            c.outstanding -= len(mine)
            m.inflight = 0
            m.inflight_bytes = 0
        self.dirty.add(c)

    def delete_durable(self, name: str) -> None:
        c = self.consumers.pop(name, None)
        if c is None:
            raise NotFound("durable", name)
        self.routes.clear()
        if self.journal is not None:
            self.journal.append([DURABLE_DEL, name])
        for m in list(c.members):
            # Its unacked deliveries stay with the session until acked or the
            # session ends: their frames may still be in flight, so their
            # store blocks must not be reused before the client copied them.
            c.members.remove(m)
            m.session.members.pop(m.sub_id, None)
            m.session.send(StreamEnd(m.sub_id, f"durable {name!r} was deleted"))
        for msg in c.pending:
            self._release(msg[3])
        c.pending.clear()
        kept = [d for d in self._delayed if d[2] is not c]
        for d in self._delayed:
            if d[2] is c:
                self._release(d[3][3])
        self._delayed = kept
        heapq.heapify(self._delayed)
        self.dirty.discard(c)

    def _route(self, subject: bytes) -> list[Consumer]:
        try:
            text = validate_subject(subject.decode())
        except (UnicodeDecodeError, InvalidArgument) as exc:
            raise RemoteProtocolError(f"invalid subject in publish: {exc}") from None
        found = [c for c in self.consumers.values() if subject_matches(c.pattern, text)]
        if len(self.routes) >= _ROUTE_CACHE_MAX:
            self.routes.clear()
        self.routes[subject] = found
        return found

    # --- publish -------------------------------------------------------------
    def publish(self, s: Session, ev: PublishBatch, now: float) -> None:
        """Check a batch (protocol errors raise), then store it or park it."""
        checked = self._check(s, ev)
        if len(s.parked) >= MAX_PARKED:
            raise RemoteProtocolError(f"over {MAX_PARKED} publish batches wait for storage")
        if s.parked or not self._commit(s, ev, checked):
            # parked: routed again when stored, to the durables that exist then
            s.parked.append((ev, now + self.config.publish_timeout))
            self.parked.add(s)

    def _check(self, s: Session, ev: PublishBatch) -> _Routed:
        """The batch's subjects and, for each, the consumers it goes to (and
        its descriptors transposed, when the check made them)."""
        err = check_slot(s.arena, ev.region_off, ev.region_len, s.client_id, ev.batch_no)
        if err is not None:
            raise RemoteProtocolError(f"publish batch {ev.batch_no}: {err}")
        lo, hi, limit = SLOT.size, ev.region_len, self.config.max_payload
        subjects, routes, pos = ev.subjects, self.routes, 0
        descs, n = ev.descs, len(ev.descs)
        if n:  # the usual batch, of one subject: checked in C-level steps
            cols = tuple(zip(*descs, strict=True))
            rels, hls, pls, sls = cols
            head = subjects[: sls[0]]
            if (
                sls.count(sls[0]) == n
                and subjects == head * n
                and min(rels) >= lo
                and max(map(operator.add, map(operator.add, rels, hls), pls)) <= hi
                and max(pls) <= limit
            ):
                cons = routes.get(head)
                return [head] * n, [cons if cons is not None else self._route(head)] * n, cols
        routed: list[list[Consumer]] = []
        subjs: list[bytes] = []
        for rel, hl, pl, sl in ev.descs:
            if rel < lo or rel + hl + pl > hi:
                raise RemoteProtocolError(
                    f"publish batch {ev.batch_no}: message at {rel} lies outside its region"
                )
            if pl > limit:
                raise RemoteProtocolError(f"payload of {pl} bytes is over the limit of {limit}")
            subj = subjects[pos : pos + sl]
            pos += sl
            subjs.append(subj)
            cons = routes.get(subj)
            routed.append(cons if cons is not None else self._route(subj))
        if pos != len(subjects):
            raise RemoteProtocolError(f"publish batch {ev.batch_no}: subjects do not add up")
        return subjs, routed, None

    def _commit(self, s: Session, ev: PublishBatch, checked: _Routed) -> bool:
        """Store the batch and answer it; False when the store has no room."""
        subjs, routed, cols = checked
        n = len(ev.descs)
        refs = sum(map(len, routed))
        if refs == 0:
            first = self.seq + 1
            self.seq += n
            s.send(PubAck(ev.batch_no, first, n, PUBACK_OK))
            return True
        span = ev.region_len - SLOT.size
        source = s.source if ev.keep and self.keep_min and ev.region_len >= self.keep_min else None
        if source is not None:
            # kept bytes count against the store as the copy would, so that
            # a shutdown or a restart can always move them into it
            need = self.alloc.block_size(span)
            if self.alloc.used + self.kept_bytes + need > self.alloc.size:
                source = None
            else:
                self.kept_bytes += need
        if source is not None:  # kept: delivered from the arena, not copied
            off = ev.region_off + SLOT.size
            base = source.tag | ev.region_off
        else:
            got = self.alloc.alloc(span)
            if got is None:
                if not self._freed:
                    return False
                self.reclaim()
                got = self.alloc.alloc(span)
                if got is None:
                    return False
            off = got
            base = off - SLOT.size
            src = ev.region_off + SLOT.size
            # SYNC POINT: payload bytes written to the store before the DeliverBatch
            # naming them is sent (the socket write orders them for the reader).
            self.store[off : off + span] = s.arena[src : src + span]
        first = self.seq + 1
        self.seq += n
        one_route = routed.count(routed[0]) == n  # equal lists: the same durables
        if self.journal is None and not self.keep_meta:
            block = Block(off, refs, span)
        else:
            block = self._journal_publish(ev, routed, one_route, off, span, refs, first, source)
        status = PUBACK_OK
        if source is not None:
            block.src = source
            block.batch_no = ev.batch_no
            source.live.add(block)
            source.kept_any = True
            status = PUBACK_KEPT
        if one_route:  # the usual batch, of one subject: no Python step per message
            cons = routed[0]
            seqs = range(first, first + n)
            rels, hls, pls, sls = cols if cols is not None else zip(*ev.descs, strict=True)
            offs = map(operator.add, itertools.repeat(base), rels)
            packed = map(MSG_DESC.pack, seqs, offs, hls, pls, sls)
            sizes = map(operator.add, hls, pls)
            msgs = list(zip(seqs, subjs, packed, itertools.repeat(block), sizes, strict=False))
            for c in cons:
                c.pending.extend(msgs)
            self.dirty.update(cons)
        else:
            self._queue_each(ev, subjs, routed, block, base, first)
        self._usage()
        s.send(PubAck(ev.batch_no, first, n, status))
        return True

    def _queue_each(
        self,
        ev: PublishBatch,
        subjs: list[bytes],
        routed: list[list[Consumer]],
        block: Block,
        base: int,
        first: int,
    ) -> None:
        """Queue each message of a batch of several routes to its durables
        (``base``: what a message's offset in the region is added to)."""
        dirty = self.dirty
        pack = MSG_DESC.pack
        last: list[Consumer] | None = None
        seq = first
        for (rel, hl, pl, sl), subj, cons in zip(ev.descs, subjs, routed, strict=True):
            if cons:
                msg = (seq, subj, pack(seq, base + rel, hl, pl, sl), block, hl + pl)
                if len(cons) == 1:
                    cons[0].pending.append(msg)
                else:
                    for c in cons:
                        c.pending.append(msg)
                if cons is not last:
                    dirty.update(cons)
                    last = cons
            seq += 1

    def _journal_publish(
        self,
        ev: PublishBatch,
        routed: list[list[Consumer]],
        one_route: bool,
        off: int,
        span: int,
        refs: int,
        first: int,
        source: Source | None,
    ) -> Block:
        """Record a stored batch: its region in the store (or in the arena
        segment of ``source``, named), descriptors and, per message, the
        durables it went to (as an index into a table of durable lists)."""
        n = len(ev.descs)
        descs = ev.raw
        if len(descs) != n * PUB_DESC.size:  # not decoded from a frame
            descs = pack_rows(PUB_DESC, ev.descs)
        first_route = routed[0]
        if one_route:
            routes = [[c.name for c in first_route]]
            route_of = bytes(2 * n)
        else:
            table: dict[int, int] = {}
            routes = []
            index = array("H")
            for cons in routed:
                i = table.get(id(cons))
                if i is None:
                    i = table[id(cons)] = len(routes)
                    routes.append([c.name for c in cons])
                index.append(i)
            route_of = index.tobytes()
        if self.journal is not None:
            self.journal.append(
                [
                    PUBLISH,
                    first,
                    descs,
                    ev.subjects,
                    routes,
                    route_of,
                    off,
                    span,
                    -1 if source is not None else self.crc(off, span),
                    source.name if source is not None else None,
                ]
            )
        return Block(off, refs, span, first, descs, ev.subjects)

    def crc(self, off: int, span: int) -> int:
        """The crc32 a journal record carries for a region (-1: none kept)."""
        return zlib.crc32(self.store[off : off + span]) if self.checksum else -1

    def _unpark(self, now: float) -> None:
        for s in list(self.parked):
            while s.parked:
                ev, deadline = s.parked[0]
                if not self._commit(s, ev, self._check(s, ev)):
                    if deadline <= now:
                        s.parked.popleft()
                        s.send(PubAck(ev.batch_no, 0, len(ev.descs), PUBACK_FULL))
                        continue
                    break
                s.parked.popleft()
            if not s.parked:
                self.parked.discard(s)

    def _release(self, block: Block, n: int = 1) -> None:
        block.refs -= n
        if block.refs == 0:
            if block.src is not None:
                self._unkeep(block.src, block)
            elif self.journal is not None:
                self._freed.append(block.off)  # the journal still names it
            else:
                self.alloc.free(block.off)

    # --- kept batches (see _kept) ----------------------------------------------
    def add_source(self, source: Source) -> None:
        """A connected client's arena, from which its kept batches are read."""
        self.sources[source.client_id] = source

    def close_source(self, source: Source) -> None:
        """Its client went away: the arena is retired now, or once nothing
        kept in it is owed any more."""
        source.session = None
        if not source.live:
            self._drop_source(source)

    def _unkeep(self, source: Source, block: Block) -> None:
        source.live.discard(block)
        block.src = None
        self.kept_bytes -= self.alloc.block_size(block.span)
        if source.session is not None:
            source.session.send(Release([block.batch_no]))
        elif not source.live:
            self._drop_source(source)

    def _drop_source(self, source: Source) -> None:
        if self.sources.pop(source.client_id, None) is None:
            return
        source.view = memoryview(b"")
        if self.journal is not None:  # as a store block: once the journal is written
            self._retiring.append(source)
        else:
            self.retire(source.seg, source.pid, source.start_time)
        if source.kept_any:  # clients may have it mapped
            gone = ArenaGone(source.client_id)
            for s in self.sessions.values():
                if s.conn.state == "READY":  # one still in its handshake mapped nothing
                    s.send(gone)

    def settle_kept(self) -> list[Source]:
        """Copy every kept batch still owed into the store, journalling the
        move; return the sources some of whose batches found no room (their
        segments must stay for the next start, which copies them then).
        Only before a clean shutdown (the arenas go, the store file stays):
        the messages queued still name the arenas."""
        journal = self.journal
        self.reclaim()
        stuck: list[Source] = []
        for source in list(self.sources.values()):
            for block in sorted(source.live, key=_FIRST):
                off = self.alloc.alloc(block.span)
                if off is None:
                    continue  # a smaller one may still fit
                src = block.off
                self.store[off : off + block.span] = source.view[src : src + block.span]
                if journal is not None:
                    journal.append([MOVED, block.first, off, self.crc(off, block.span)])
                block.off = off
                block.src = None
                source.live.discard(block)
                self.kept_bytes -= self.alloc.block_size(block.span)
            if source.live:
                stuck.append(source)
        self._usage()
        return stuck

    def reclaim(self) -> None:
        """Free the blocks (and retire the arenas) released since the last
        call, after writing the journal records that released them: until
        then a restart would still find their messages owed, so the bytes
        must stay."""
        freed, retiring = self._freed, self._retiring
        if not freed and not retiring:
            return
        if self.journal is not None:
            self.journal.flush()
        self._freed, self._retiring = [], []
        free = self.alloc.free
        for off in freed:
            free(off)
        for source in retiring:
            self.retire(source.seg, source.pid, source.start_time)
        self._usage()

    def _usage(self) -> None:
        publish_usage(self._store_seg, self.alloc.used, len(self.alloc))

    # --- deliveries ----------------------------------------------------------
    def pump(self, now: float) -> None:
        """Send what every dirty consumer can deliver now."""
        if self.parked:
            self._unpark(now)
        while self.dirty:
            c = self.dirty.pop()
            self._deliver(c, now)

    def _deliver(self, c: Consumer, now: float) -> None:
        cfg = self.config
        members, pending = c.members, c.pending
        while pending and members and c.outstanding < cfg.max_ack_pending:
            m = None
            for _ in range(len(members)):
                cand = members[c.rr % len(members)]
                c.rr += 1
                if (
                    cand.inflight < cfg.member_window
                    and cand.inflight_bytes < cfg.member_window_bytes
                    and not cand.session.unread  # it does not read: send it nothing more
                ):
                    m = cand
                    break
            if m is None:
                return
            room = min(cfg.member_window - m.inflight, cfg.max_ack_pending - c.outstanding, CHUNK)
            take = min(room, len(pending))
            s = m.session
            first = s.next_did
            deadline = now + c.ack_wait
            counts = c.counts
            parts: list[bytes] = []
            subjects: list[bytes] = []
            deliveries = s.deliveries
            popleft = pending.popleft
            journal = self.journal
            seqs = array("q") if journal is not None else None
            dcounts = array("I") if counts else None  # else all first deliveries
            room_bytes, nbytes = cfg.member_window_bytes - m.inflight_bytes, 0
            for did in range(first, first + take):
                msg = popleft()
                if dcounts is not None:
                    dcount = counts.pop(msg[0], 0) + 1
                    dcounts.append(dcount)
                    if dcount > 1:
                        c.redelivered += 1
                else:
                    dcount = 1
                deliveries[did] = (m, msg, deadline, dcount)
                if seqs is not None:
                    seqs.append(msg[0])
                parts.append(msg[2])
                subjects.append(msg[1])
                nbytes += msg[4]
                if nbytes >= room_bytes:  # large messages: a member holds a few
                    break
            take = did - first + 1
            s.next_did = first + take
            m.inflight += take
            m.inflight_bytes += nbytes
            c.outstanding += take
            heapq.heappush(c.timers, (deadline, next(self._tie), s, first, first + take - 1))
            if seqs is not None:
                journal.append([DELIVERED, c.name, seqs.tobytes()])  # type: ignore[union-attr]
            redone = (
                pack_rows(COUNT, [(n,) for n in dcounts]) if dcounts and max(dcounts) > 1 else b""
            )
            s.send(DeliverBatch(m.sub_id, take, first, b"".join(parts), b"".join(subjects), redone))

    # --- acks ----------------------------------------------------------------
    def ack(self, s: Session, ranges: list[tuple[int, ...]], now: float) -> None:
        """Resolve ranges of delivery ids. Ids never issued to ``s`` are a
        protocol violation; ids already redelivered elsewhere are ignored.

        Consecutive ids mostly share a member and a block, so the counters
        are settled once per run of equal member (and block), not per id.
        """
        acked: dict[Consumer, array[int]] | None = {} if self.journal is not None else None
        try:
            self._ack_ranges(s, ranges, now, acked)
        finally:  # also when a bad range ends the call: what was settled is journalled
            if acked:
                journal = self.journal
                assert journal is not None
                for c, done in acked.items():
                    if done:
                        journal.append([ACKED, c.name, done.tobytes()])
            self._usage()

    def _ack_ranges(
        self,
        s: Session,
        ranges: list[tuple[int, ...]],
        now: float,
        acked: dict[Consumer, array[int]] | None,
    ) -> None:
        deliveries, top = s.deliveries, s.next_did
        pop = deliveries.pop
        for first, n, kind, delay_ms in ranges:
            if first < 1 or first + n > top:
                raise RemoteProtocolError(
                    f"ack for delivery ids {first}..{first + n - 1}: never delivered to this client"
                )
            if kind == ACK_KIND_PROGRESS:
                self._progress(s, first, n, now)
                continue
            settle = kind != ACK_KIND_NAK
            naks: list[tuple[Consumer, Message, int]] = []
            last_m: Member | None = None
            last_b: Block | None = None
            seqs: array[int] | None = None
            mn = bn = mb = 0
            for did in range(first, first + n):
                rec = pop(did, None)
                if rec is None:
                    continue  # expired and redelivered: a late ack is ignored
                m, msg, _, dcount = rec
                if m is not last_m:
                    if last_m is not None:
                        self._settle(last_m, mn, mb)
                    last_m, mn, mb = m, 0, 0
                    if acked is not None:
                        seqs = acked.get(m.consumer)
                        if seqs is None:
                            seqs = acked[m.consumer] = array("q")
                mn += 1
                mb += msg[4]
                if settle:
                    b = msg[3]
                    if b is not last_b:
                        if last_b is not None:
                            self._release(last_b, bn)
                        last_b, bn = b, 0
                    bn += 1
                    if dcount > 1:
                        m.consumer.counts.pop(msg[0], None)
                    if seqs is not None:
                        seqs.append(msg[0])
                else:
                    naks.append((m.consumer, msg, dcount))
            if last_m is not None:
                self._settle(last_m, mn, mb)
            if last_b is not None:
                self._release(last_b, bn)
            for c, msg, dcount in reversed(naks):
                if self.consumers.get(c.name) is not c:
                    self._release(msg[3])  # its durable was deleted: nobody will read it
                    continue
                c.counts[msg[0]] = dcount
                if delay_ms:
                    due = now + delay_ms / 1000.0
                    heapq.heappush(self._delayed, (due, next(self._tie), c, msg, dcount))
                else:
                    c.pending.appendleft(msg)

    def _settle(self, m: Member, n: int, nbytes: int) -> None:
        m.inflight -= n
        m.inflight_bytes -= nbytes
        c = m.consumer
        c.outstanding -= n
        self.dirty.add(c)

    def _progress(self, s: Session, first: int, n: int, now: float) -> None:
        deliveries = s.deliveries
        for did in range(first, first + n):
            rec = deliveries.get(did)
            if rec is not None:
                c = rec[0].consumer
                deadline = now + c.ack_wait
                deliveries[did] = (rec[0], rec[1], deadline, rec[3])
                heapq.heappush(c.timers, (deadline, next(self._tie), s, did, did))

    # --- time ----------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Redeliver what passed its ack_wait or nak delay; expire parked publishes."""
        for s in self.sessions.values():
            if s.unread:
                self._reap_unread(s)
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, c, msg, dcount = heapq.heappop(delayed)
            c.counts[msg[0]] = dcount
            c.pending.appendleft(msg)
            self.dirty.add(c)
        for c in self.consumers.values():
            timers = c.timers
            while timers and timers[0][0] <= now:
                _, _, s, first, last = heapq.heappop(timers)
                deliveries = s.deliveries
                for did in range(first, last + 1):
                    rec = deliveries.get(did)
                    if rec is None or rec[0].consumer is not c or rec[2] > now:
                        continue
                    del deliveries[did]
                    m, msg, _, dcount = rec
                    m.inflight -= 1
                    m.inflight_bytes -= msg[4]
                    c.outstanding -= 1
                    c.counts[msg[0]] = dcount
                    c.pending.appendleft(msg)
                    self.dirty.add(c)
                    self._hold_unread(s, did, msg[3])
        if self.parked:
            self._unpark(now)

    def _hold_unread(self, s: Session, did: int, block: Block) -> None:
        """Delivery ``did`` of ``s`` expired: if the client has not read its
        frame yet, its block stays (its bytes unchanged) until it has."""
        seg = s.arena_seg
        # no arena (never while its session is open) or closing: nothing is read any more
        if seg is None or s.closed or read_mark(seg.view) >= did:
            return
        block.refs += 1
        s.unread.append((did, block))

    def _reap_unread(self, s: Session, everything: bool = False) -> None:
        """Let go of the blocks of expired deliveries ``s`` has read by now
        (``everything``: all of them, the client being gone); once none is
        left, its members get deliveries again."""
        seg = s.arena_seg
        mark = read_mark(seg.view) if seg is not None and not everything else -1
        kept = []
        for did, block in s.unread:
            if everything or did <= mark:
                self._release(block)
            else:
                kept.append((did, block))
        s.unread = kept
        if not kept:
            self.dirty.update(m.consumer for m in s.members.values())

    def drop_session(self, s: Session) -> None:
        """A client went away: its members leave, its parked publishes vanish."""
        if s.unread:
            self._reap_unread(s, everything=True)
        for m in list(s.members.values()):
            self._leave(m)
        s.members.clear()
        for rec in s.deliveries.values():  # left: deliveries of deleted durables
            self._release(rec[1][3])
        s.deliveries.clear()
        s.parked.clear()
        self.parked.discard(s)

    def stats(self) -> dict[str, Any]:
        return {
            "store_used": self.alloc.used,
            "store_size": self.alloc.size,
            "kept_batches": sum(len(src.live) for src in self.sources.values()),
            # expired deliveries whose clients have not read them: blocks held
            "unread_expired": sum(len(s.unread) for s in self.sessions.values()),
            "orphan_arenas": sum(1 for src in self.sources.values() if src.session is None),
            "consumers": {
                name: {
                    "pattern": c.pattern,
                    "pending": len(c.pending),
                    "unacked": c.outstanding,
                    "redelivered": c.redelivered,
                    "members": len(c.members),
                }
                for name, c in self.consumers.items()
            },
        }
