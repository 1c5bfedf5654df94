"""The broker's job queues: ready, delayed, claimed and dead jobs, claim leases
with fencing tokens, parked claims, dead letters and the dedup index.

Single writer: only the broker's event loop touches anything here; nothing
here does I/O (answers go out through ``Session.send``).

A job is *ready* (in its queue's ``ready`` deque), *delayed* (naked with a
delay: on the ``_delayed`` heap) or *claimed* (by one session until a
deadline: on the ``_leases`` heap). Each claim takes the queue's next fencing
token and counts one attempt. A claim ends by ack (the job is gone), by nak,
lease expiry or its session closing; those three make the job ready again
unless it has had ``max_attempts`` claims, when it becomes a dead letter
(``"max attempts (N) reached after <cause>"``) and is published on
``dlq.<queue>`` with the headers ``job-id``, ``queue``, ``attempts`` and
``reason``. A ``release`` (a client giving back a prefetched claim it never
started) ends a claim without counting the attempt.

Heaps hold ``(deadline, token, job)`` and are checked lazily: an entry whose
job moved on (other token, other state, later deadline) is skipped.

Claims that find nothing are parked (the call's ``Result`` is deferred) and
answered by the next enqueue or, with an empty list, when their wait ends.

Payloads travel inline in the control frames (msgpack ``bin``) and are kept
as ``bytes`` in the broker's heap, bounded by ``max_job_bytes``.

Dedup: the records ``dedup.<queue>`` / key -> ``dedup_record(job_id)`` live
in the broker's KV state behind :class:`DedupIndex` (get / create), so a
client's ``kv.get`` sees them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgpack

from .._errors import BusError, Conflict, Full, InvalidArgument, NotFound, PayloadTooLarge
from .._names import validate_key, validate_queue, validate_worker_id
from .._values import DEFAULT_MAX_ATTEMPTS, check_duration, dedup_record, parse_dedup_record
from ..layout import SLOT, write_slot
from ..protocol import Call, PublishBatch, Result
from ..protocol._wire_errors import error_to_wire
from ._journal import (
    JOB_ACK,
    JOB_ADD,
    JOB_CLAIM,
    JOB_DEAD,
    JOB_DISCARD,
    JOB_READY,
    JOB_REQUEUE,
)
from ._leases import SWEEP_INTERVAL, holder_alive, same_process

if TYPE_CHECKING:
    from ._broker import Broker, Session
    from ._journal import Journal
    from ._pubsub import PubsubState

__all__ = ["DedupIndex", "JobsState", "claim_answer", "job_calls"]

log = logging.getLogger("klieo.shmd")

MAX_JOBS: Final = 1_000_000
"""Most live jobs (ready, delayed, claimed) per broker before enqueue waits."""
MAX_CLAIM_BATCH: Final = 256
MAX_CLAIM_WAIT: Final = 30.0
PREFETCH_MIN_READY: Final = 16
"""A claim asking for several jobs gets more than one only when at least
this many are ready, and then at most an equal share of them among the
sessions that claimed from the queue in the last ``ACTIVE_WINDOW`` seconds:
small queues stay exact and fair to other workers."""
ACTIVE_WINDOW: Final = 1.0

# resolve kinds (``jobs_resolve`` entries)
ACK: Final = 0
NAK: Final = 1
DEAD: Final = 2
BEAT: Final = 3
RELEASE: Final = 4

_READY: Final = 0
_DELAYED: Final = 1
_CLAIMED: Final = 2
_GONE: Final = 3


class DedupIndex(Protocol):
    """Where dedup records live: the KV bucket ``dedup.<queue>``."""

    def get(self, bucket: str, key: str) -> bytes | None: ...
    def create(self, bucket: str, key: str, value: bytes) -> None: ...


class _Job:
    __slots__ = (
        "attempts",
        "deadline",
        "dedup",
        "holder",
        "id",
        "max_attempts",
        "payload",
        "queue",
        "session",
        "state",
        "token",
        "ttl",
    )

    def __init__(
        self, queue: _Queue, job_id: str, payload: bytes, dedup: str | None, max_attempts: int
    ) -> None:
        self.queue = queue
        self.id = job_id
        self.payload = payload
        self.dedup = dedup
        self.max_attempts = max_attempts
        self.attempts = 0
        self.state = _READY
        self.token = 0
        self.session: Session | None = None
        # (pid, start time) of a claim recovered after a broker restart whose
        # holder has not reconnected yet (``session`` is then None)
        self.holder: tuple[int, float] | None = None
        self.ttl = 0.0
        self.deadline = 0.0


class _Waiter:
    """A parked claim: answered by an enqueue or when ``deadline`` passes."""

    __slots__ = ("call_id", "cid", "deadline", "exact", "n", "session", "ttl")

    def __init__(
        self,
        session: Session,
        call_id: int,
        cid: int,
        n: int,
        ttl: float,
        deadline: float,
        exact: bool,
    ) -> None:
        self.session = session
        self.call_id = call_id
        self.cid = cid
        self.n = n
        self.exact = exact
        self.ttl = ttl
        self.deadline = deadline


class _Held:
    """The claim batches of one session, pruned of resolved ones as it grows."""

    __slots__ = ("batches", "limit")

    def __init__(self) -> None:
        self.batches: list[list[_Job]] = []
        self.limit = 256

    def add(self, s: Session, batch: list[_Job]) -> None:
        batches = self.batches
        batches.append(batch)
        if len(batches) >= self.limit:
            batches[:] = [b for b in batches if any(j.session is s for j in b)]
            self.limit = max(256, 2 * len(batches))


class _Queue:
    __slots__ = ("claimers", "dead", "delayed", "jobs", "name", "ready", "tokens", "waiters")

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: dict[str, _Job] = {}
        self.ready: deque[_Job] = deque()
        self.delayed = 0
        # id -> [payload, attempts, reason, dedup, max_attempts], oldest first
        self.dead: dict[str, list[Any]] = {}
        self.tokens = 0
        self.waiters: deque[_Waiter] = deque()
        self.claimers: dict[Session, float] = {}  # session -> time of its last claim


class _Internal:
    """The broker as the publisher of one ``dlq.<queue>`` message: a
    session-like object with its own private arena holding one batch, fed to
    ``PubsubState.publish`` as a client's batch would be (its PubAck goes
    nowhere; if the store is full the batch waits like a client's)."""

    client_id = 0
    closed = False
    client_name = "klieo-shmd"

    def __init__(self, arena: memoryview) -> None:
        self.parked: deque[Any] = deque()
        self.arena = arena

    def send(self, event: object) -> None:
        return None


class JobsState:
    """Every job queue of one broker."""

    def __init__(
        self,
        pubsub: PubsubState,
        clock: Callable[[], float],
        max_payload: int,
        max_job_bytes: int,
        publish_timeout: float,
        dedup: DedupIndex,
    ) -> None:
        self.pubsub = pubsub
        self.clock = clock
        self.max_payload = max_payload
        self.max_job_bytes = max_job_bytes
        self.publish_timeout = publish_timeout
        self.dedup = dedup
        self.queues: dict[str, _Queue] = {}
        self.live = 0
        self.live_bytes = 0
        # session -> the batches of jobs it claimed (a job is still the
        # session's while job.session is it); compacted as it grows
        self.held: dict[Session, _Held] = {}
        self.waiting: set[_Queue] = set()
        self.parked: deque[tuple[Session, int, _Queue, list[Any], Any, float]] = deque()
        # (deadline, tie, jobs claimed with that deadline)
        self._leases: list[tuple[float, int, list[_Job]]] = []
        self._delayed: list[tuple[float, int, _Job]] = []
        self._tie = itertools.count()
        self._prefix = uuid.uuid4().hex[:10]
        self._id_of = (self._prefix + "%x").__mod__  # job number -> id
        self._next_id = 1
        self.journal: Journal | None = None
        # acked job ids per queue not yet journalled: one record per queue per
        # journal flush (``journal_acks``), not one per ack call
        self._acked: dict[str, list[str]] = {}
        self.orphans: set[_Job] = set()  # recovered claims whose holder has not come back
        self._next_sweep = 0.0

    # --- lookups ---------------------------------------------------------------
    def peek(self, name: object) -> _Queue | None:
        """The queue ``name`` if it has ever held anything (no new state for
        read-only calls)."""
        q = self.queues.get(name) if type(name) is str else None
        if q is None:
            validate_queue(name)  # type: ignore[arg-type]
        return q

    def queue(self, name: object) -> _Queue:
        q = self.queues.get(name) if type(name) is str else None
        if q is None:
            checked = validate_queue(name)  # type: ignore[arg-type]
            q = self.queues[checked] = _Queue(checked)
        return q

    # --- enqueue -----------------------------------------------------------------
    def enqueue(
        self, s: Session, call_id: int, q: _Queue, payloads: list[Any], extra: Any, now: float
    ) -> list[str] | None:
        """Add jobs; their ids, or ``None`` when parked waiting for room.
        ``extra`` lists ``[index, dedup_key, max_attempts]`` for the jobs that
        have either."""
        limit = self.max_payload
        for payload in payloads:
            if type(payload) is not bytes:
                raise InvalidArgument("payload", type(payload).__name__, "must be bytes")
            if len(payload) > limit:
                raise PayloadTooLarge(len(payload), limit)
        if extra:
            for i, dedup, max_attempts in extra:
                if type(i) is not int or not 0 <= i < len(payloads):
                    raise InvalidArgument("index", i, "must index the payloads")
                if dedup is not None:
                    validate_key(dedup)
                if max_attempts is not None and (type(max_attempts) is not int or max_attempts < 1):
                    raise InvalidArgument(
                        "max_attempts", max_attempts, "must be an int >= 1 or None"
                    )
        size = sum(map(len, payloads))
        if self.parked or not self._fits(len(payloads), size):
            self.parked.append((s, call_id, q, payloads, extra, now + self.publish_timeout))
            return None
        return self._add(q, payloads, extra, size)

    def _fits(self, n: int, size: int) -> bool:
        return self.live + n <= MAX_JOBS and (
            self.live_bytes + size <= self.max_job_bytes or self.live == 0
        )

    def _add(self, q: _Queue, payloads: list[bytes], extra: Any, size: int) -> list[str]:
        first = self._next_id
        n = len(payloads)
        self._next_id = first + n
        ids = list(map(self._id_of, range(first, first + n)))
        if not extra:
            new = [
                _Job(q, i, p, None, DEFAULT_MAX_ATTEMPTS)
                for i, p in zip(ids, payloads, strict=True)
            ]
        else:
            options: dict[int, tuple[str | None, int | None]] = {i: (d, m) for i, d, m in extra}
            bucket = f"dedup.{q.name}"
            new = []
            mine: dict[str, str] = {}  # dedup key -> id, for repeats within this batch
            for k, (job_id, payload) in enumerate(zip(ids, payloads, strict=True)):
                dedup, max_attempts = options.get(k, (None, None))
                if dedup is not None:
                    original = mine.get(dedup)
                    if original is None:
                        record = self.dedup.get(bucket, dedup)
                        if record is not None:
                            original = parse_dedup_record(record)[0]
                    if original is not None:
                        ids[k] = original
                        continue
                    mine[dedup] = job_id
                attempts = max_attempts or DEFAULT_MAX_ATTEMPTS
                new.append(_Job(q, job_id, payload, dedup, attempts))
            # The jobs first, then their dedup records: the journal then never
            # holds a record whose job it lost. A full KV fails the call after
            # the jobs exist (a retry may enqueue them again: at-least-once).
            self._insert(q, new, sum(len(j.payload) for j in new), plain=False)
            for job in new:
                if job.dedup is not None:
                    self.dedup.create(bucket, job.dedup, dedup_record(job.id))
            return ids
        self._insert(q, new, size, plain=True)
        return ids

    def _insert(self, q: _Queue, new: list[_Job], size: int, *, plain: bool) -> None:
        """Add ``new`` jobs to ``q`` (``plain``: fresh, no dedup key, default max_attempts)."""
        if self.journal is not None and new:
            self.journal.append(job_add_record(q.name, new, plain=plain))
        q.jobs.update(zip([j.id for j in new], new, strict=True))
        q.ready.extend(new)
        self.live += len(new)
        self.live_bytes += size
        if new and q.waiters:
            self._serve_waiters(q)

    def _unpark(self, now: float) -> None:
        parked = self.parked
        while parked:
            s, call_id, q, payloads, extra, deadline = parked[0]
            if s.closed:
                parked.popleft()
                continue
            size = sum(map(len, payloads))
            if self._fits(len(payloads), size):
                parked.popleft()
                try:
                    added = self._add(q, payloads, extra, size)
                except BusError as exc:  # e.g. the dedup record hit a full KV table
                    name, args = error_to_wire(exc)
                    s.send(Result(call_id, None, name, args))
                else:
                    s.send(Result(call_id, added))
            elif deadline <= now:
                parked.popleft()
                name, args = error_to_wire(Full("job storage of klieo-shmd", MAX_JOBS))
                s.send(Result(call_id, None, name, args))
            else:
                return

    # --- claims --------------------------------------------------------------------
    def claim(
        self,
        s: Session,
        call_id: int,
        q: _Queue,
        cid: int,
        n: int,
        ttl: float,
        wait: float,
        now: float,
        exact: bool = False,
    ) -> list[Any] | None:
        """Claim up to ``n`` ready jobs for ``ttl``; park for ``wait`` seconds
        when there is none (``None``: the answer comes later). ``exact``: an
        explicit batch (``claim_many``) gets up to ``n`` of the ready jobs;
        otherwise ``n`` is a prefetch hint, granted as ``_share`` says."""
        if q.ready:
            return self._take(s, q, n, ttl, now, exact)
        if wait <= 0:
            return claim_answer(now + ttl, [], 0)
        q.waiters.append(_Waiter(s, call_id, cid, n, ttl, now + wait, exact))
        self.waiting.add(q)
        return None

    def _take(
        self, s: Session, q: _Queue, n: int, ttl: float, now: float, exact: bool
    ) -> list[Any]:
        """Claim the next jobs of ``q``: the claim's answer (:func:`claim_answer`)."""
        ready = q.ready
        n = self._share(s, q, n, now, exact)
        deadline = now + ttl
        first = q.tokens + 1
        batch = [ready.popleft() for _ in range(n)]
        token = first
        for job in batch:
            job.attempts += 1
            job.state = _CLAIMED
            job.token = token
            job.session = s
            job.ttl = ttl
            job.deadline = deadline
            token += 1
        q.tokens = token - 1
        answer = claim_answer(deadline, batch, first)
        if self.journal is not None:
            _, ids, _, _, attempts, *_ = answer
            self.journal.append([JOB_CLAIM, q.name, s.pid, s.start_time, ttl, ids, first, attempts])
        heapq.heappush(self._leases, (deadline, next(self._tie), batch))
        held = self.held.get(s)
        if held is None:
            held = self.held[s] = _Held()
        held.add(s, batch)
        return answer

    @staticmethod
    def _share(s: Session, q: _Queue, n: int, now: float, exact: bool) -> int:
        """How many of the ``n`` jobs asked for a claim gets (see PREFETCH_MIN_READY)."""
        claimers = q.claimers
        claimers[s] = now
        avail = len(q.ready)
        if exact:
            return min(n, avail)
        if n <= 1 or avail < PREFETCH_MIN_READY:
            return 1
        since = now - ACTIVE_WINDOW
        if len(claimers) > 64:
            for gone in [c for c, t in claimers.items() if t < since or c.closed]:
                del claimers[gone]
        active = sum(1 for t in claimers.values() if t >= since)
        return max(1, min(n, avail // max(1, active)))

    def _serve_waiters(self, q: _Queue) -> None:
        waiters = q.waiters
        now = 0.0
        while waiters and q.ready:
            w = waiters.popleft()
            if w.session.closed:
                continue
            if not now:
                now = self.clock()
            w.session.send(Result(w.call_id, self._take(w.session, q, w.n, w.ttl, now, w.exact)))
        if not waiters:
            self.waiting.discard(q)

    def unpark_claim(self, s: Session, cid: int, now: float) -> None:
        """A client gave up a parked claim: answer it with nothing now."""
        for q in list(self.waiting):
            for w in q.waiters:
                if w.session is s and w.cid == cid:
                    q.waiters.remove(w)
                    s.send(Result(w.call_id, claim_answer(now + w.ttl, [], 0)))
                    if not q.waiters:
                        self.waiting.discard(q)
                    return

    # --- resolving claims ------------------------------------------------------------
    def resolve(self, s: Session, entries: list[Any], now: float) -> list[Any]:
        """Ack, nak, dead-letter, heartbeat or release claims. Returns
        ``[index, expected, current]`` for each entry whose claim was lost."""
        conflicts: list[Any] = []
        queues = self.queues
        freed = False
        acked = self._acked if self.journal is not None else None
        for i, (qname, job_id, token, kind, arg) in enumerate(entries):
            q = queues.get(qname)
            job = q.jobs.get(job_id) if q is not None else None
            if job is not None and job.state == _CLAIMED and job.deadline <= now:
                self._end(job, "lease expired", 0.0, now)
                freed = True
            if job is not None and job.holder is not None and job.session is None:
                self._adopt(s, job)
            if job is None or job.state != _CLAIMED or job.token != token or job.session is not s:
                current = job.token if job is not None and job.state == _CLAIMED else None
                conflicts.append([i, token, current])
                continue
            if kind == ACK:
                self._unclaim(job)
                job.state = _GONE
                del job.queue.jobs[job.id]
                self.live -= 1
                self.live_bytes -= len(job.payload)
                freed = True
                if acked is not None:
                    acked.setdefault(job.queue.name, []).append(job.id)
            elif kind == BEAT:
                job.deadline = now + job.ttl
                heapq.heappush(self._leases, (job.deadline, next(self._tie), [job]))
            elif kind == NAK:
                self._end(job, "nak", check_duration("delay", arg), now)
            elif kind == DEAD:
                self._bury(job, str(arg), now)
                freed = True
            elif kind == RELEASE:
                self._unclaim(job)
                job.attempts -= 1
                job.state = _READY
                if self.journal is not None:
                    self.journal.append([JOB_READY, job.queue.name, job.id, job.attempts, 0])
                job.queue.ready.appendleft(job)
                if job.queue.waiters:
                    self._serve_waiters(job.queue)
            else:
                raise InvalidArgument("kind", kind, "unknown resolve kind")
        if freed and self.parked:
            self._unpark(now)
        return conflicts

    def resolve_group(
        self,
        s: Session,
        qname: object,
        kind: object,
        ids: list[Any],
        tokens: list[Any],
        now: float,
        base: int,
    ) -> list[Any]:
        """Resolve the claims ``zip(ids, tokens)`` of queue ``qname`` the same
        way (``kind`` ACK, BEAT or RELEASE: the kinds without an argument), as
        :meth:`resolve` would entry by entry; conflict indexes start at
        ``base``. Acks of live claims of ``s`` take a short path."""
        if kind not in (ACK, BEAT, RELEASE):
            raise InvalidArgument("kind", kind, "a group takes ack, heartbeat or release")
        if len(ids) != len(tokens):
            raise InvalidArgument("tokens", len(tokens), f"must be as many as the ids ({len(ids)})")
        q = self.queues.get(qname) if type(qname) is str else None
        if kind != ACK or q is None:
            entries = [[qname, i, t, kind, None] for i, t in zip(ids, tokens, strict=True)]
            return [[i + base, e, c] for i, e, c in self.resolve(s, entries, now)]
        conflicts: list[Any] = []
        jobs = q.jobs
        done: list[str] = []
        size = 0
        try:
            for i, (job_id, token) in enumerate(zip(ids, tokens, strict=True)):
                job = jobs.get(job_id)  # an unhashable id raises: the finally still counts
                if (
                    job is not None
                    and job.session is s
                    and job.token == token
                    and job.state == _CLAIMED
                    and now < job.deadline
                    and job.holder is None
                ):
                    job.session = None
                    job.state = _GONE
                    del jobs[job_id]
                    done.append(job_id)
                    size += len(job.payload)
                    continue
                entry = [qname, job_id, token, ACK, None]
                for _, expected, current in self.resolve(s, [entry], now):
                    conflicts.append([i + base, expected, current])
        finally:
            if done:
                self.live -= len(done)
                self.live_bytes -= size
                if self.journal is not None:
                    self._acked.setdefault(q.name, []).extend(done)
        if done and self.parked:
            self._unpark(now)
        return conflicts

    def journal_acks(self) -> None:
        """Append the acks gathered since the last flush (the broker calls
        this before every journal flush). Deferring them is safe: nothing
        journalled later names an acked job."""
        acked, journal = self._acked, self.journal
        if acked and journal is not None:
            for qname, ids in acked.items():
                journal.append([JOB_ACK, qname, ids])
            acked.clear()

    def _adopt(self, s: Session, job: _Job) -> None:
        """A recovered claim's holder is back on a new connection: the claim
        becomes that session's (its token still decides)."""
        holder = job.holder
        if holder is None or not same_process(holder[0], holder[1], s):
            return
        job.holder = None
        job.session = s
        self.orphans.discard(job)
        held = self.held.get(s)
        if held is None:
            held = self.held[s] = _Held()
        held.add(s, [job])

    def _unclaim(self, job: _Job) -> None:
        job.session = None
        if job.holder is not None:
            job.holder = None
            self.orphans.discard(job)

    def _end(self, job: _Job, cause: str, delay: float, now: float) -> None:
        """A claim ended without an ack: retry, or dead-letter past max_attempts."""
        self._unclaim(job)
        q = job.queue
        if job.attempts >= job.max_attempts:
            self._bury(job, f"max attempts ({job.max_attempts}) reached after {cause}", now)
        elif delay > 0:
            job.state = _DELAYED
            q.delayed += 1
            heapq.heappush(self._delayed, (now + delay, next(self._tie), job))
            if self.journal is not None:
                due = time.time() + delay
                self.journal.append([JOB_READY, q.name, job.id, job.attempts, due])
        else:
            job.state = _READY
            if self.journal is not None:
                self.journal.append([JOB_READY, q.name, job.id, job.attempts, 0])
            q.ready.appendleft(job)
            if q.waiters:
                self._serve_waiters(q)

    def _bury(self, job: _Job, reason: str, now: float) -> None:
        """Make ``job`` a dead letter and publish it on ``dlq.<queue>``."""
        self._unclaim(job)
        q = job.queue
        q.jobs.pop(job.id, None)
        self.live -= 1
        self.live_bytes -= len(job.payload)
        job.state = _GONE
        q.dead[job.id] = [job.payload, job.attempts, reason, job.dedup, job.max_attempts]
        if self.journal is not None:
            self.journal.append([JOB_DEAD, q.name, job.id, reason, job.attempts])
        headers = {
            "job-id": job.id,
            "queue": q.name,
            "attempts": str(job.attempts),
            "reason": reason,
        }
        self._publish(f"dlq.{q.name}", headers, job.payload, now)

    def _publish(self, subject: str, headers: dict[str, str], payload: bytes, now: float) -> None:
        """Publish through the broker's pubsub as a client batch of one."""
        hdr = msgpack.packb(headers, use_bin_type=True)
        size = SLOT.size + len(hdr) + len(payload)
        buf = bytearray(size)
        me = _Internal(memoryview(buf))
        write_slot(me.arena, 0, 0, size, 1)
        buf[SLOT.size : SLOT.size + len(hdr)] = hdr
        buf[SLOT.size + len(hdr) :] = payload
        subj = subject.encode()
        desc = (SLOT.size, len(hdr), len(payload), len(subj))
        ev = PublishBatch(1, 0, size, [desc], subj)
        try:
            self.pubsub.publish(me, ev, now)  # type: ignore[arg-type]
        except Exception:  # the dead letter is kept; only its notification failed
            log.exception("cannot publish a dead letter on %s", subject)

    # --- dead letters ------------------------------------------------------------------
    def dead_letters(self, q: _Queue) -> list[Any]:
        return [[job_id, q.name, d[0], d[1], d[2], d[3]] for job_id, d in q.dead.items()]

    def requeue(self, q: _Queue, job_id: object) -> None:
        d = q.dead.pop(job_id, None) if type(job_id) is str else None
        if d is None:
            raise NotFound("dead letter", str(job_id))
        job = _Job(q, str(job_id), d[0], d[3], d[4])
        if self.journal is not None:
            self.journal.append([JOB_REQUEUE, q.name, job.id])
        q.jobs[job.id] = job
        q.ready.append(job)
        self.live += 1
        self.live_bytes += len(job.payload)
        if q.waiters:
            self._serve_waiters(q)

    def discard(self, q: _Queue, job_id: object) -> None:
        if type(job_id) is not str or q.dead.pop(job_id, None) is None:
            raise NotFound("dead letter", str(job_id))
        if self.journal is not None:
            self.journal.append([JOB_DISCARD, q.name, job_id])

    def stats(self, q: _Queue) -> dict[str, int]:
        claimed = len(q.jobs) - len(q.ready) - q.delayed
        return {
            "ready": len(q.ready),
            "delayed": q.delayed,
            "claimed": claimed,
            "dead": len(q.dead),
            "waiting_claims": len(q.waiters),
        }

    def summary(self) -> dict[str, Any]:
        return {name: self.stats(q) for name, q in self.queues.items() if q.jobs or q.dead}

    # --- time and sessions ---------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Expire leases, make delayed jobs ready, end parked claims' waits."""
        leases = self._leases
        while leases and leases[0][0] <= now:
            for job in heapq.heappop(leases)[2]:
                if job.state == _CLAIMED and job.deadline <= now:
                    self._end(job, "lease expired", 0.0, now)
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, job = heapq.heappop(delayed)
            if job.state == _DELAYED and job.queue.jobs.get(job.id) is job:
                q = job.queue
                q.delayed -= 1
                job.state = _READY
                q.ready.append(job)
                if q.waiters:
                    self._serve_waiters(q)
        if self.orphans and now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            for job in list(self.orphans):
                holder = job.holder
                if job.state != _CLAIMED or holder is None:
                    self.orphans.discard(job)
                elif not holder_alive(*holder):
                    self._end(job, "worker gone", 0.0, now)
        for q in list(self.waiting):
            kept: deque[_Waiter] = deque()
            for w in q.waiters:
                if w.session.closed:
                    continue
                if w.deadline <= now:
                    w.session.send(Result(w.call_id, claim_answer(now + w.ttl, [], 0)))
                else:
                    kept.append(w)
            q.waiters = kept
            if not kept:
                self.waiting.discard(q)
        if self.parked:
            self._unpark(now)

    def drop_session(self, s: Session, now: float) -> None:
        """A client went away: its claims end at once ("worker gone"), each
        counting as an attempt; its parked claims and enqueues vanish."""
        held = self.held.pop(s, None)
        if held is not None:
            for batch in held.batches:
                for job in batch:
                    if job.session is s and job.state == _CLAIMED:
                        self._end(job, "worker gone", 0.0, now)
        for q in self.queues.values():
            q.claimers.pop(s, None)
        for q in list(self.waiting):
            q.waiters = deque(w for w in q.waiters if w.session is not s)
            if not q.waiters:
                self.waiting.discard(q)
        if self.parked:
            self.parked = deque(p for p in self.parked if p[0] is not s)
            self._unpark(now)


def claim_answer(deadline: float, batch: list[_Job], first_token: int) -> list[Any]:
    """The answer to a ``jobs_claim`` call, by columns:
    ``[deadline, ids, payloads, first_token, attempts, max_attempts, dedups]``.
    The claims' fencing tokens are ``first_token``, ``first_token + 1``...
    in order; ``attempts`` and ``max_attempts`` are one int when every job
    has the same value, else a list; ``dedups`` is ``None`` when no job has
    a dedup key, else a list. A claim that got nothing has empty lists."""
    n = len(batch)
    attempts: Any = [j.attempts for j in batch]
    if n and attempts.count(attempts[0]) == n:
        attempts = attempts[0]
    max_attempts: Any = [j.max_attempts for j in batch]
    if n and max_attempts.count(max_attempts[0]) == n:
        max_attempts = max_attempts[0]
    dedups: Any = [j.dedup for j in batch]
    if dedups.count(None) == n:
        dedups = None
    ids = [j.id for j in batch]
    payloads = [j.payload for j in batch]
    return [deadline, ids, payloads, first_token, attempts, max_attempts, dedups]


def job_add_record(queue: str, jobs: list[_Job], *, plain: bool = False) -> list[Any]:
    """The JOB_ADD journal record of ``jobs`` (see ``_journal``); ``plain``:
    the caller knows they are fresh jobs without options (none to record)."""
    options = (
        []
        if plain
        else [
            [i, j.dedup, j.max_attempts, j.attempts]
            for i, j in enumerate(jobs)
            if j.dedup is not None or j.max_attempts != DEFAULT_MAX_ATTEMPTS or j.attempts
        ]
    )
    return [JOB_ADD, queue, [j.id for j in jobs], [j.payload for j in jobs], options]


# --- calls -------------------------------------------------------------------------------
def _c_enqueue(b: Broker, s: Session, ev: Call, now: float) -> object:
    a = ev.args
    jobs = b.jobs
    q = jobs.queue(a["q"])
    payloads = a["p"]
    if not isinstance(payloads, list):
        raise InvalidArgument("p", type(payloads).__name__, "must be a list of payloads")
    return jobs.enqueue(s, ev.call_id, q, payloads, a.get("x"), now)


def _c_claim(b: Broker, s: Session, ev: Call, now: float) -> object:
    a = ev.args
    jobs = b.jobs
    q = jobs.queue(a["q"])
    validate_worker_id(a["w"])
    ttl = check_duration("lease_ttl", a["ttl"], positive=True)
    wait = min(check_duration("wait", a.get("wait", 1.0)), MAX_CLAIM_WAIT)
    n = a.get("n", 1)
    if type(n) is not int or not 1 <= n <= MAX_CLAIM_BATCH:
        raise InvalidArgument("n", n, f"must be an int in 1..{MAX_CLAIM_BATCH}")
    exact = a.get("x", False) is True
    return jobs.claim(s, ev.call_id, q, int(a.get("cid", 0)), n, ttl, wait, now, exact)


def _c_unpark(b: Broker, s: Session, ev: Call, now: float) -> object:
    b.jobs.unpark_claim(s, int(ev.args["cid"]), now)
    return {}


def _c_resolve(b: Broker, s: Session, ev: Call, now: float) -> object:
    """``r``: entries ``[queue, id, token, kind, arg]``; ``g``: groups
    ``[queue, kind, ids, tokens]`` (see ``JobsState.resolve_group``), after
    the entries. Conflicts index the entries, then the groups' claims."""
    args = ev.args
    entries = args.get("r", [])
    groups = args.get("g", [])
    if not isinstance(entries, list):
        raise InvalidArgument("r", type(entries).__name__, "must be a list")
    if not isinstance(groups, list):
        raise InvalidArgument("g", type(groups).__name__, "must be a list")
    jobs = b.jobs
    conflicts = jobs.resolve(s, entries, now) if entries else []
    base = len(entries)
    for group in groups:
        if not isinstance(group, list) or len(group) != 4:
            raise InvalidArgument("g", group, "must hold [queue, kind, ids, tokens] groups")
        qname, kind, ids, tokens = group
        if not isinstance(ids, list) or not isinstance(tokens, list):
            raise InvalidArgument("g", group, "ids and tokens must be lists")
        conflicts += jobs.resolve_group(s, qname, kind, ids, tokens, now, base)
        base += len(ids)
    if ev.call_id < 0:  # a notification: nobody waits for the answer
        if conflicts:
            log.warning(
                "%r: %d job resolutions came after their claims were lost", s, len(conflicts)
            )
        return None
    if len(entries) == 1 and not groups and conflicts:
        _, expected, current = conflicts[0]
        _, job_id, *_ = entries[0]
        raise Conflict(
            f"claim {expected} on job {job_id!r} was lost (lease expired or taken over)",
            expected=expected,
            current=current,
        )
    return conflicts


def _c_dead_letters(b: Broker, s: Session, ev: Call, now: float) -> object:
    q = b.jobs.peek(ev.args["q"])
    return [] if q is None else b.jobs.dead_letters(q)


def _c_requeue(b: Broker, s: Session, ev: Call, now: float) -> object:
    q = b.jobs.peek(ev.args["q"])
    if q is None:
        raise NotFound("dead letter", str(ev.args["id"]))
    b.jobs.requeue(q, ev.args["id"])
    return {}


def _c_discard(b: Broker, s: Session, ev: Call, now: float) -> object:
    q = b.jobs.peek(ev.args["q"])
    if q is None:
        raise NotFound("dead letter", str(ev.args["id"]))
    b.jobs.discard(q, ev.args["id"])
    return {}


def _c_stats(b: Broker, s: Session, ev: Call, now: float) -> object:
    q = b.jobs.peek(ev.args["q"])
    if q is None:
        return {"ready": 0, "delayed": 0, "claimed": 0, "dead": 0}
    return b.jobs.stats(q)


_Handler = Callable[["Broker", "Session", Call, float], object]


def job_calls(defer: object) -> dict[str, _Handler]:
    """The broker's ``jobs_*`` calls; a handler's ``None`` becomes ``defer``
    (the answer is sent later, or never for a notification)."""

    def deferring(fn: _Handler) -> _Handler:
        def call(b: Broker, s: Session, ev: Call, now: float) -> object:
            value = fn(b, s, ev, now)
            return defer if value is None else value

        return call

    return {
        "jobs_enqueue": deferring(_c_enqueue),
        "jobs_claim": deferring(_c_claim),
        "jobs_unpark": _c_unpark,
        "jobs_resolve": deferring(_c_resolve),
        "jobs_dead_letters": _c_dead_letters,
        "jobs_requeue": _c_requeue,
        "jobs_discard": _c_discard,
        "jobs_stats": _c_stats,
    }
