"""``JobQueue`` over the broker, on top of ``ShmClient``.

Payloads travel inline in the control frames (msgpack ``bin``), one copy each
way through the socket; the broker keeps them until the job is acked or
discarded. (Arena/store transport as for publishes needs a second ring in the
client's tx arena; inline is what the broker serves today.)

Speed without changing the contract:

- **Pipelined enqueues.** Concurrent ``enqueue`` calls on one bus share one
  ``jobs_enqueue`` call per queue per loop turn; each returns its own id.
- **Parked claims.** A claim on an empty queue waits in the broker (about a
  second, ``claim_wait``) and is answered by the next enqueue: no polling.
- **Adaptive prefetch.** A worker that claims again quickly asks for several
  jobs at once (at most ``PREFETCH_MAX``, about 5% of its lease's worth at its
  claim rate); the broker grants more than one only from a deep queue. The
  extra claims wait in this bus and are handed out by later ``claim`` calls;
  a claim handed out with less than half its lease left is heartbeated first.
  Closing the bus gives unstarted ones back without counting an attempt.
- **Batches.** ``claim_many`` asks for up to ``max_jobs`` in one call (the
  broker grants up to that many of the ready jobs, no share); ``ack_many``
  sends its acks in one notification, one socket write.
- **Fenced resolutions without a round trip.** A claim's lease runs from
  when the broker received the claim (or heartbeat), never earlier than when
  this client sent it; so while ``sent + ttl`` is more than ``_margin(ttl)``
  away, nobody else can hold the job. Then ``ack``, ``nak``, ``dead_letter``
  and ``heartbeat`` are written to the socket as a notification and return
  without waiting for the broker's answer (once they return, the broker gets
  them even if this process is killed). Nearer the deadline they wait for
  the answer, which raises :class:`~klieo_shm.Conflict` when the claim was
  taken over. A notification that reaches the broker too late after all
  (this event loop blocked for longer than the margin) is logged there and
  the job is retried: at-least-once still holds.

Reconnection (see ``_client``): a claim belongs to this process, not to one
connection, and keeps its token. After a reconnect, ``ack``, ``nak``,
``dead_letter`` and ``heartbeat`` of a claim made before go out on the new
connection as calls (a restarted broker accepts the token from the same
process; ``Conflict`` if the claim did not survive), after which the fast
path applies again; prefetched claims are heartbeated the same way before
they are handed out. A ``claim`` whose answer was lost with the connection
is sent again on the new connection (a job the lost answer granted stays
claimed until its lease expires, then is retried). Resolutions queued while
disconnected go out first on the new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Final, cast

from .._errors import BusError, Conflict, InvalidArgument, PayloadTooLarge
from .._handles import ClaimedJob, ClaimImpl, ack_each, take_for_ack
from .._interfaces import JobQueue
from .._names import validate_queue, validate_worker_id
from .._values import DeadLetter, Job, JobId, QueueStats, check_batch, check_duration
from ..protocol import Call
from ._client import ConnectionInterrupted, ShmClient

__all__ = ["CLAIM_WAIT", "ShmJobQueue"]

CLAIM_WAIT: Final = 1.0
"""Seconds a claim waits in the broker for a job before returning ``None``."""
PREFETCH_MAX: Final = 256
_ENQUEUE_BATCH_BYTES: Final = 512 * 1024
_ENQUEUE_BATCH_COUNT: Final = 4096
_ENQUEUE_EAGER: Final = 256
"""Jobs queued by ``enqueue_async`` in one loop turn that are sent at once,
not at the end of the turn (as the client's publishes; see ``_EAGER_MSGS``)."""
_RESOLVE_BATCH: Final = 4096
_CLAIM_RETRIES: Final = 3
"""Times a claim is sent again after its connection broke, before it raises."""
_MAX_REASON: Final = 4096
"""Longest dead-letter reason kept (characters)."""

_ACK: Final = 0
_NAK: Final = 1
_DEAD: Final = 2
_BEAT: Final = 3
_RELEASE: Final = 4


def _margin(ttl: float) -> float:
    """Lease time that must be left for a resolution to skip the round trip."""
    return max(1.0, ttl / 4)


class _Lease:
    """What one claim call granted, shared by the jobs it claimed: the bus,
    the connection generation it is known on, the lease's ttl and a lower
    bound of its deadline on this process's monotonic clock. A job that is
    heartbeated gets a lease of its own."""

    __slots__ = ("deadline", "gen", "owner", "quick_until", "ttl")

    def __init__(self, owner: ShmJobQueue, gen: int, ttl: float, deadline: float) -> None:
        self.owner = owner
        self.gen = gen
        self.ttl = ttl
        self.deadline = deadline
        self.quick_until = deadline - _margin(ttl)  # resolutions skip the round trip until then


class _ShmJob(ClaimedJob):
    """A claim on the shm backend: its lease kept on the job itself, so that
    a claimed job is one object and ``ack_many`` checks a batch in one pass."""

    __slots__ = ("_lease",)

    # ClaimedJob.__init__'s assignments, inline as _ShmMsg's (one call less per job)
    def __init__(
        self,
        queue: str,
        id: str,
        payload: bytes,
        attempt: int,
        token: int,
        lease: _Lease,
        dedup_key: str | None,
        max_attempts: int | None,
    ) -> None:
        self._resolved_by = None
        self.queue = queue
        self.id = id
        self.payload = payload
        self.attempt = attempt
        self.token = token
        self.dedup_key = dedup_key
        self.max_attempts = max_attempts
        self._lease = lease

    @property
    def _impl(self) -> ClaimImpl:  # type: ignore[override]  # ClaimedJob's slot, read-only here
        return _Claim(self)


class _Claim:
    """``ClaimImpl`` of one ``_ShmJob``."""

    __slots__ = ("job",)

    def __init__(self, job: _ShmJob) -> None:
        self.job = job

    async def heartbeat(self) -> None:
        await self.job._lease.owner._resolve(self.job, _BEAT, None)

    async def ack(self) -> None:
        await self.job._lease.owner._resolve(self.job, _ACK, None)

    async def nak(self, delay: float) -> None:
        await self.job._lease.owner._resolve(self.job, _NAK, delay)

    async def dead_letter(self, reason: str) -> None:
        await self.job._lease.owner._resolve(self.job, _DEAD, reason[:_MAX_REASON])


_Key = tuple[str, str, float]


def _enqueued(
    queue: str, batch: list[tuple[Job, asyncio.Future[str]]], answer: asyncio.Future[Any]
) -> None:
    """Hand each enqueue of ``batch`` its id (or the batch's error)."""
    if answer.cancelled():
        err: BaseException = BusError(f"enqueue on {queue!r} was cancelled")
    else:
        exc = answer.exception()
        ids = None if exc is not None else answer.result()
        if exc is None and isinstance(ids, list) and len(ids) == len(batch):
            for (_, fut), job_id in zip(batch, ids, strict=True):
                if not fut.done():
                    fut.set_result(str(job_id))
            return
        err = exc if exc is not None else BusError(f"malformed answer to enqueue on {queue!r}")
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(err)


class ShmJobQueue(JobQueue):
    """JobQueue over one ``ShmClient``."""

    def __init__(self, client: ShmClient, claim_wait: float = CLAIM_WAIT) -> None:
        self._client = client
        self._claim_wait = claim_wait
        self._pending: list[list[Any]] = []
        # acks queued by ack_many: queue -> (ids, tokens), sent after _pending
        self._acks: dict[str, tuple[list[str], list[int]]] = {}
        self._drain_scheduled = False
        self._enq: dict[str, list[tuple[Job, asyncio.Future[str]]]] = {}
        self._enq_scheduled = False
        self._buffers: dict[_Key, deque[_ShmJob]] = {}
        self._rate: dict[_Key, tuple[float, int]] = {}  # key -> (last answer, jobs in it)
        self._cids = itertools.count(1)
        self._notes = itertools.count(-1, -1)
        self._queues: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _queue(self, queue: str) -> str:
        if queue not in self._queues or type(queue) is not str:
            validate_queue(queue)
            if len(self._queues) > 10000:
                self._queues.clear()
            self._queues.add(queue)
        return queue

    # --- fire-and-forget resolutions -----------------------------------------
    def _drain_soon(self) -> None:
        """End of the loop turn that queued resolutions: write them out now,
        ahead of what other buses of this process send later."""
        self._drain()
        if self._client.queued:
            self._client.write_now()

    def _drain(self) -> None:
        """Send the queued resolutions now (before the caller's next frame).
        While reconnecting they wait for the new connection (``restore``):
        claims keep their tokens across connections of this process."""
        self._drain_scheduled = False
        if (self._pending or self._acks) and self._client.connected:
            self._send_pending()

    def _send_pending(self) -> None:
        """One ``jobs_resolve`` notification per ``_RESOLVE_BATCH`` claims:
        the queued entries, then the queued acks as groups."""
        pending, self._pending = self._pending, []
        acks, self._acks = self._acks, {}
        client, n = self._client, _RESOLVE_BATCH
        for i in range(0, len(pending), n):
            client.send(Call(next(self._notes), "jobs_resolve", {"r": pending[i : i + n]}))
        for queue, (ids, tokens) in acks.items():
            for i in range(0, len(ids), n):
                group = [queue, _ACK, ids[i : i + n], tokens[i : i + n]]
                client.send(Call(next(self._notes), "jobs_resolve", {"g": [group]}))

    async def restore(self) -> None:
        """On a new connection: send the resolutions queued meanwhile."""
        if self._pending or self._acks:
            self._send_pending()

    def _queue_ack(self, job: _ShmJob) -> None:
        """Queue an ack of ``job``: the acks of one queue go as one group."""
        group = self._acks.get(job.queue)
        if group is None:
            group = self._acks[job.queue] = ([], [])
        group[0].append(job.id)
        group[1].append(job.token)

    def _queue_resolution(self, entry: list[Any]) -> None:
        self._pending.append(entry)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._client.loop().call_soon(self._drain_soon)

    async def _resolve(self, job: _ShmJob, kind: int, arg: object) -> None:
        client = self._client
        lease = job._lease
        entry = [job.queue, job.id, job.token, kind, arg]
        now = time.monotonic()
        if lease.gen == client.gen and client.connected and now < lease.quick_until:
            if kind == _ACK:
                self._queue_ack(job)
            else:
                self._pending.append(entry)
            self._drain_soon()  # in the kernel before we return: survives our SIGKILL
            if kind == _BEAT:
                job._lease = _Lease(self, lease.gen, lease.ttl, now + lease.ttl)
            return
        await client.ensure()
        self._drain()
        gen, sent = client.gen, time.monotonic()
        await client.call("jobs_resolve", {"r": [entry]})
        if kind == _BEAT:  # the broker has it: the fast path holds again, on this connection
            job._lease = _Lease(self, gen, lease.ttl, sent + lease.ttl)

    # --- enqueue --------------------------------------------------------------
    async def enqueue(self, queue: str, job: Job) -> JobId:
        client = self._client
        if not client.connected:
            self._queue(queue)
            await client.ensure()
        return await self.enqueue_async(queue, job)

    def enqueue_async(self, queue: str, job: Job) -> asyncio.Future[JobId]:
        """Like ``ShmPubsub.publish_async``: queue the job and return at once
        a future of its id, resolved when the broker has it (or failed with
        ``Full``/``Closed``). Argument errors raise here, synchronously.

        Not part of the ``JobQueue`` interface: the way to enqueue without a
        task per job. Jobs queued in one loop turn share one call, in call
        order. Must be called from the bus's event loop.
        """
        self._queue(queue)
        if not isinstance(job, Job):
            raise InvalidArgument("job", job, "must be a klieo_shm.Job")
        client = self._client
        limit = client.max_payload
        if limit and len(job.payload) > limit:
            raise PayloadTooLarge(len(job.payload), limit)
        loop = client.loop()
        fut: asyncio.Future[str] = loop.create_future()
        batch = self._enq.get(queue)
        if batch is None:
            batch = self._enq[queue] = []
        batch.append((job, fut))
        if len(batch) >= _ENQUEUE_EAGER and client.connected:
            self._send_enqueues()  # a long burst: the broker starts on it now
        elif not self._enq_scheduled:
            self._enq_scheduled = True
            loop.call_soon(self._send_enqueues)
        return fut

    def _send_enqueues(self) -> None:
        self._enq_scheduled = False
        batches, self._enq = self._enq, {}
        client = self._client
        for queue, batch in batches.items():
            while batch:
                take, size = 0, 0
                for job, _ in batch:
                    if take and (
                        take >= _ENQUEUE_BATCH_COUNT
                        or size + len(job.payload) > _ENQUEUE_BATCH_BYTES
                    ):
                        break
                    take += 1
                    size += len(job.payload)
                chunk, batch = batch[:take], batch[take:]
                args = self._enqueue_args(queue, chunk)
                if client.connected:
                    answer = self._call_nowait("jobs_enqueue", args)
                    answer.add_done_callback(functools.partial(_enqueued, queue, chunk))
                else:
                    self._spawn(self._enqueue_later(queue, chunk, args))
        client.write_now()  # this turn's batches go out now, in one write

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _enqueue_args(queue: str, batch: list[tuple[Job, asyncio.Future[str]]]) -> dict[str, Any]:
        extra = [
            [i, job.dedup_key, job.max_attempts]
            for i, (job, _) in enumerate(batch)
            if job.dedup_key is not None or job.max_attempts is not None
        ]
        args: dict[str, Any] = {"q": queue, "p": [job.payload for job, _ in batch]}
        if extra:
            args["x"] = extra
        return args

    async def _enqueue_later(
        self, queue: str, batch: list[tuple[Job, asyncio.Future[str]]], args: dict[str, Any]
    ) -> None:
        """A batch queued while disconnected: connect, then send it."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            await self._client.ensure()
            answer.set_result(await self._call_now("jobs_enqueue", args))
        except Exception as exc:
            answer.set_exception(exc)
        _enqueued(queue, batch, answer)

    def _call_nowait(
        self, method: str, args: dict[str, Any], *, waits: bool = False
    ) -> asyncio.Future[Any]:
        """Send a call now (after the queued resolutions); the future of its
        result. The client must be connected."""
        self._drain()
        return self._client.start_call(method, args, waits=waits)[1]

    # --- claim -----------------------------------------------------------------
    async def claim(self, queue: str, worker_id: str, lease_ttl: float) -> ClaimedJob | None:
        key = (queue, worker_id, lease_ttl)
        buf = self._buffers.get(key)  # only validated keys have a buffer
        if buf:
            job = await self._next_buffered(buf)
            if job is not None:
                return job
        ttl = self._check_claim(queue, worker_id, lease_ttl)
        now = time.monotonic()
        since, handed = self._rate.get(key, (0.0, 0))
        if handed:  # jobs per lease share at the rate the last batch went
            per_job = max((now - since) / handed, 1e-6)
            n = max(1, min(PREFETCH_MAX, int(0.05 * ttl / per_job)))
        else:
            n = 1
        jobs = await self._fetch(key, ttl, n, exact=False)
        if not jobs:
            return None
        if len(jobs) > 1:
            self._buffers.setdefault(key, deque()).extend(cast("list[_ShmJob]", jobs[1:]))
            # Prefetched claims not handed out by half their lease go back
            # without counting an attempt (a slow job must not burn the
            # attempts of the jobs queued behind it).
            asyncio.get_running_loop().call_later(ttl / 2, self._give_back_stale, key)
        return jobs[0]

    async def claim_many(
        self, queue: str, worker_id: str, lease_ttl: float, max_jobs: int
    ) -> list[ClaimedJob]:
        """One ``jobs_claim`` call for up to ``max_jobs`` (at most
        ``PREFETCH_MAX`` per call); claims this bus prefetched for ``claim``
        with the same arguments are handed out first, without a call."""
        check_batch(max_jobs)
        key = (queue, worker_id, lease_ttl)
        out: list[_ShmJob] = []
        buf = self._buffers.get(key)
        try:
            while buf and len(out) < max_jobs:
                job = await self._next_buffered(buf)
                if job is None:
                    break
                out.append(job)
        except BaseException:
            if buf is not None:
                buf.extendleft(reversed(out))  # still ours: kept for the next claim
            raise
        if out:
            return cast("list[ClaimedJob]", out)
        ttl = self._check_claim(queue, worker_id, lease_ttl)
        return await self._fetch(key, ttl, min(max_jobs, PREFETCH_MAX), exact=True)

    def _check_claim(self, queue: str, worker_id: str, lease_ttl: float) -> float:
        self._queue(queue)
        validate_worker_id(worker_id)
        return check_duration("lease_ttl", lease_ttl, positive=True)

    async def _next_buffered(self, buf: deque[_ShmJob]) -> _ShmJob | None:
        """The next prefetched claim of ``buf`` that is still ours, if any."""
        lease = buf[0]._lease
        client = self._client
        if (
            lease.gen == client.gen
            and lease.deadline - time.monotonic() > lease.ttl / 2
            and client.connected
        ):
            return buf.popleft()
        return await self._from_buffer(buf)

    async def _fetch(self, key: _Key, ttl: float, n: int, *, exact: bool) -> list[ClaimedJob]:
        """Claim up to ``n`` jobs of ``key``'s queue in one call (``exact``:
        an explicit batch, else a prefetch hint the broker may trim)."""
        client = self._client
        queue, worker_id, _ = key
        if not client.connected:
            await client.ensure()
        retries = 0
        while True:
            cid = next(self._cids)
            args = {
                "q": queue,
                "w": worker_id,
                "ttl": ttl,
                "n": n,
                "wait": self._claim_wait,
                "cid": cid,
            }
            if exact:
                args["x"] = True
            gen = client.gen
            sent = time.monotonic()
            task = self._call_nowait("jobs_claim", args, waits=self._claim_wait > 0)
            client.write_now()
            try:
                answer = await asyncio.shield(task)
                break
            except asyncio.CancelledError:
                self._abandon(task, gen, queue, cid, ttl)
                raise
            except ConnectionInterrupted:
                # The answer was lost with the connection: ask again on the
                # new one (ensure waits for it; Closed once the client gave up).
                retries += 1
                if retries > _CLAIM_RETRIES:
                    raise
                await client.ensure()
        if not isinstance(answer, list) or len(answer) != 7:
            raise BusError(f"malformed answer to claim on {queue!r}")
        # The broker's deadline is its receipt time + ttl, so never before ours:
        # no clock shared with the broker is assumed.
        jobs = self._make(queue, answer, _Lease(self, gen, ttl, sent + ttl))
        if not exact:  # the rate claim() sizes its prefetch by
            self._rate[key] = (time.monotonic(), len(jobs))
        return jobs

    async def ack_many(self, jobs: Iterable[ClaimedJob]) -> None:
        """The claims of this bus with time to spare on their leases go out
        in one notification (one socket write, as one ``ack`` does); the
        others (near their deadline, from an older connection or another
        bus) are acked one by one with an answer."""
        client = self._client
        now = time.monotonic()
        gen = client.gen if client.connected else -1
        answered: list[ClaimedJob] = []
        for job in take_for_ack(jobs, ClaimedJob):
            if (
                type(job) is _ShmJob
                and (lease := job._lease).owner is self
                and lease.gen == gen
                and now < lease.quick_until
            ):
                self._queue_ack(job)
            else:
                answered.append(job)
        if self._acks:
            self._drain_soon()  # in the kernel before we return: survives our SIGKILL
        if answered:
            await ack_each(answered)

    def _give_back_stale(self, key: tuple[str, str, float]) -> None:
        buf = self._buffers.get(key)
        if not buf:
            return
        limit = time.monotonic() + key[2] / 2 + 0.001
        while buf:
            if buf[0]._lease.deadline > limit:
                break  # a later batch: its own timer covers it
            job = buf.popleft()
            self._queue_resolution([job.queue, job.id, job.token, _RELEASE, None])
        self._drain()

    async def _from_buffer(self, buf: deque[_ShmJob]) -> _ShmJob | None:
        """The next buffered claim that is still ours: one that spent half its
        lease waiting here, or was made on an older connection, is handed out
        only after a heartbeat (on the current connection) succeeded."""
        while buf:
            job = buf.popleft()
            try:
                await job.heartbeat()
            except Conflict:
                continue  # taken over, or it did not survive a broker restart
            except (ConnectionInterrupted, asyncio.CancelledError):
                buf.appendleft(job)  # unknown: try it again on the next claim
                raise
            return job
        return None

    @staticmethod
    def _make(queue: str, answer: list[Any], lease: _Lease) -> list[ClaimedJob]:
        """The jobs of a claim's answer (``claim_answer`` in the broker's
        ``_jobs``), all under ``lease``."""
        _, ids, payloads, token, attempts, max_attempts, dedups = answer
        n = len(ids)
        if type(attempts) is int:
            attempts = itertools.repeat(attempts, n)
        if type(max_attempts) is int:
            max_attempts = itertools.repeat(max_attempts, n)
        if dedups is None:
            dedups = itertools.repeat(None, n)
        return list(
            map(
                _ShmJob,
                itertools.repeat(queue, n),
                ids,
                payloads,
                attempts,
                range(token, token + n),
                itertools.repeat(lease, n),
                dedups,
                max_attempts,
            )
        )

    def _abandon(
        self, task: asyncio.Future[Any], gen: int, queue: str, cid: int, ttl: float
    ) -> None:
        """A claim call was cancelled: stop its wait in the broker and give
        back whatever it claimed anyway, without counting the attempt."""
        client = self._client
        if client.gen == gen and client.connected:
            with contextlib.suppress(BusError):
                client.send(Call(next(self._notes), "jobs_unpark", {"cid": cid}))

        def give_back(t: asyncio.Future[Any]) -> None:
            if t.cancelled() or t.exception() is not None:
                return
            answer = t.result()
            if not (isinstance(answer, list) and len(answer) == 7 and answer[1]):
                return
            _, ids, _, first, *_ = answer
            for token, job_id in enumerate(ids, first):
                self._queue_resolution([queue, job_id, token, _RELEASE, None])

        task.add_done_callback(give_back)

    def release_all(self) -> None:
        """Give back every prefetched claim not handed out (before closing)."""
        buffers, self._buffers = self._buffers, {}
        for buf in buffers.values():
            for job in buf:
                self._queue_resolution([job.queue, job.id, job.token, _RELEASE, None])
        self._drain()

    # --- dead letters and stats ------------------------------------------------------
    async def _call_now(self, method: str, args: dict[str, Any]) -> Any:
        """``client.call`` after the queued resolutions (one write for both)."""
        self._drain()
        return await self._client.call(method, args)

    async def _call(self, method: str, args: dict[str, Any]) -> Any:
        client = self._client
        await client.ensure()
        self._drain()
        return await client.call(method, args)

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        rows = await self._call("jobs_dead_letters", {"q": self._queue(queue)})
        return [DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def requeue(self, queue: str, job_id: JobId) -> None:
        await self._call("jobs_requeue", {"q": self._queue(queue), "id": str(job_id)})

    async def discard(self, queue: str, job_id: JobId) -> None:
        await self._call("jobs_discard", {"q": self._queue(queue), "id": str(job_id)})

    async def stats(self, queue: str) -> QueueStats:
        d = await self._call("jobs_stats", {"q": self._queue(queue)})
        main = ("ready", "delayed", "claimed", "dead")
        extra = {k: int(v) for k, v in d.items() if k not in main}
        return QueueStats(
            queue, int(d["ready"]), int(d["delayed"]), int(d["claimed"]), int(d["dead"]), extra
        )
