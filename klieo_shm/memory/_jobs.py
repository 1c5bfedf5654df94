"""The job queues of a memory world.

A job is ``ready`` (in the queue's FIFO), ``delayed`` (naked with a delay,
on a timer), or ``claimed`` (by one bus, until a deadline on a timer); a dead
letter leaves the jobs for the queue's ``dead`` list. Each claim takes the
queue's next fencing token and counts one attempt. A claim ends by ack (the
job is gone), by nak, by lease expiry or by its bus closing ("worker gone");
the last three make the job ready again unless it has had ``max_attempts``
claims, in which case it becomes a dead letter with the reason
``"max attempts (N) reached after <cause>"``. Every dead letter is also
published on ``dlq.<queue>`` with the job's payload and the headers
``job-id``, ``queue``, ``attempts`` and ``reason``.

Dedup: a job with a ``dedup_key`` writes ``dedup_record(id)`` to the KV
bucket ``dedup.<queue>`` with create-only semantics, in the same locked step
as the enqueue; a key that already has a record returns the recorded id.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from .._errors import Conflict, Full, InvalidArgument, NotFound
from .._handles import ClaimedJob
from .._interfaces import JobQueue
from .._names import validate_queue, validate_worker_id
from .._values import (
    DEFAULT_MAX_ATTEMPTS,
    DeadLetter,
    Job,
    JobId,
    QueueStats,
    check_batch,
    check_duration,
    dedup_record,
    parse_dedup_record,
)
from ._core import Session, Timer, WaitSet
from ._world import BusOptions, World, check_open

__all__ = ["JobsState", "MemoryJobQueue"]

_State = Literal["ready", "delayed", "claimed"]


@dataclass(slots=True, eq=False)
class _Job:
    queue: str
    id: JobId
    payload: bytes
    dedup_key: str | None
    max_attempts: int
    attempts: int = 0
    state: _State = "ready"
    token: int = 0
    session: Session | None = None
    worker: str = ""
    ttl: float = 0.0
    deadline: float = 0.0
    timer: Timer | None = None


@dataclass(slots=True, eq=False)
class _Queue:
    name: str
    jobs: dict[JobId, _Job] = field(default_factory=dict)
    ready: deque[_Job] = field(default_factory=deque)
    dead: dict[JobId, tuple[DeadLetter, int]] = field(default_factory=dict)
    """Dead letters, oldest first, with their job's max_attempts (for requeue)."""
    tokens: int = 0
    claims: WaitSet = field(default_factory=WaitSet)
    room: WaitSet = field(default_factory=WaitSet)


class JobsState:
    """Every queue of one world (guarded by ``world.lock``)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.queues: dict[str, _Queue] = {}
        self.claimed: dict[Session, set[_Job]] = {}

    def queue(self, name: str) -> _Queue:
        found = self.queues.get(name)
        if found is None:
            found = self.queues[name] = _Queue(name)
        return found

    def add(self, queue: _Queue, job: Job) -> JobId | None:
        """Enqueue ``job``; its id, or ``None`` when the queue is full."""
        bucket = f"dedup.{queue.name}"
        kv = self.world.kv
        if job.dedup_key is not None:
            record = kv.get(bucket, job.dedup_key)
            if record is not None:
                return parse_dedup_record(record.value)[0]
        if len(queue.jobs) >= self.world.limits.max_jobs:
            return None
        job_id = uuid.uuid4().hex
        if job.dedup_key is not None:
            kv.cas(bucket, job.dedup_key, dedup_record(job_id), None)
        attempts = job.max_attempts or DEFAULT_MAX_ATTEMPTS
        self.make_ready(queue, _Job(queue.name, job_id, job.payload, job.dedup_key, attempts))
        return job_id

    def make_ready(self, queue: _Queue, job: _Job) -> None:
        job.state = "ready"
        queue.jobs[job.id] = job
        queue.ready.append(job)
        queue.claims.wake_all()

    def take(self, session: Session, queue: _Queue, worker_id: str, ttl: float) -> _Job | None:
        while queue.ready:
            job = queue.ready.popleft()
            if queue.jobs.get(job.id) is job and job.state == "ready":
                break
        else:
            return None
        queue.tokens += 1
        job.attempts += 1
        job.state = "claimed"
        job.token = queue.tokens
        job.session = session
        job.worker = worker_id
        job.ttl = ttl
        self._arm(queue, job)
        self.claimed.setdefault(session, set()).add(job)
        return job

    def _arm(self, queue: _Queue, job: _Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
        job.deadline = time.monotonic() + job.ttl
        token = job.token
        job.timer = self.world.timers.call_at(job.deadline, lambda: self._expire(queue, job, token))

    def _expire(self, queue: _Queue, job: _Job, token: int) -> None:
        if job.state == "claimed" and job.token == token and job.deadline <= time.monotonic():
            self.end_claim(queue, job, "lease expired")

    def live(self, session: Session, queue: _Queue, job_id: JobId, token: int) -> _Job:
        """The job of claim ``token`` if that claim still holds it, else ``Conflict``."""
        check_open(session)
        job = queue.jobs.get(job_id)
        if job is not None and job.state == "claimed" and job.deadline <= time.monotonic():
            self.end_claim(queue, job, "lease expired")
        if job is None or job.state != "claimed" or job.token != token:
            current = job.token if job is not None and job.state == "claimed" else None
            raise Conflict(
                f"claim {token} on job {job_id!r} of queue {queue.name!r} was lost "
                "(lease expired or taken over)",
                expected=token,
                current=current,
            )
        return job

    def _unclaim(self, job: _Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        if job.session is not None:
            owned = self.claimed.get(job.session)
            if owned is not None:
                owned.discard(job)
            job.session = None

    def end_claim(self, queue: _Queue, job: _Job, cause: str, delay: float = 0.0) -> None:
        """A claim ended without an ack: retry, or dead-letter past max_attempts."""
        self._unclaim(job)
        if job.attempts >= job.max_attempts:
            self.bury(queue, job, f"max attempts ({job.max_attempts}) reached after {cause}")
        elif delay > 0:
            job.state = "delayed"

            def due() -> None:
                if queue.jobs.get(job.id) is job and job.state == "delayed":
                    self.make_ready(queue, job)

            self.world.timers.call_later(delay, due)
        else:
            self.make_ready(queue, job)

    def finish(self, queue: _Queue, job: _Job) -> None:
        self._unclaim(job)
        del queue.jobs[job.id]
        queue.room.wake_all()

    def bury(self, queue: _Queue, job: _Job, reason: str) -> None:
        """Make ``job`` a dead letter and publish it on ``dlq.<queue>``."""
        self._unclaim(job)
        queue.jobs.pop(job.id, None)
        queue.room.wake_all()
        dead = DeadLetter(job.id, queue.name, job.payload, job.attempts, reason, job.dedup_key)
        queue.dead[job.id] = (dead, job.max_attempts)
        headers = {
            "job-id": job.id,
            "queue": queue.name,
            "attempts": str(job.attempts),
            "reason": reason,
        }
        self.world.streams.store(f"dlq.{queue.name}", job.payload, headers)

    def drop_session(self, session: Session) -> None:
        for job in list(self.claimed.pop(session, ())):
            self.end_claim(self.queues[job.queue], job, "worker gone")


class _Claim:
    """``ClaimImpl`` of one claim: the job and the claim's token."""

    __slots__ = ("_job_id", "_queue", "_session", "_state", "_token")

    def __init__(
        self, state: JobsState, session: Session, queue: _Queue, job_id: JobId, token: int
    ) -> None:
        self._state = state
        self._session = session
        self._queue = queue
        self._job_id = job_id
        self._token = token

    def _live(self) -> _Job:
        return self._state.live(self._session, self._queue, self._job_id, self._token)

    async def heartbeat(self) -> None:
        with self._state.world.lock:
            self._state._arm(self._queue, self._live())

    async def ack(self) -> None:
        with self._state.world.lock:
            self._state.finish(self._queue, self._live())

    async def nak(self, delay: float) -> None:
        with self._state.world.lock:
            self._state.end_claim(self._queue, self._live(), "nak", delay)

    async def dead_letter(self, reason: str) -> None:
        with self._state.world.lock:
            self._state.bury(self._queue, self._live(), reason)


class MemoryJobQueue(JobQueue):
    """``JobQueue`` of one bus on a memory world."""

    def __init__(self, world: World, session: Session, options: BusOptions) -> None:
        self._world = world
        self._state = world.jobs
        self._session = session
        self._options = options

    async def enqueue(self, queue: str, job: Job) -> JobId:
        validate_queue(queue)
        if not isinstance(job, Job):
            raise InvalidArgument("job", job, "must be a klieo_shm.Job")
        self._world.check_payload(job.payload)
        with self._world.lock:
            q = self._state.queue(queue)

        def add() -> tuple[bool, JobId | None]:
            check_open(self._session)
            job_id = self._state.add(q, job)
            return job_id is not None, job_id

        deadline = time.monotonic() + self._options.publish_timeout
        _, job_id = await self._world.poll(self._session, add, q.room, deadline)
        if job_id is None:
            raise Full(f"queue {queue!r}", self._world.limits.max_jobs)
        return job_id

    async def claim(self, queue: str, worker_id: str, lease_ttl: float) -> ClaimedJob | None:
        jobs = await self._claim(queue, worker_id, lease_ttl, 1)
        return jobs[0] if jobs else None

    async def claim_many(
        self, queue: str, worker_id: str, lease_ttl: float, max_jobs: int
    ) -> list[ClaimedJob]:
        return await self._claim(queue, worker_id, lease_ttl, check_batch(max_jobs))

    async def _claim(
        self, queue: str, worker_id: str, lease_ttl: float, n: int
    ) -> list[ClaimedJob]:
        validate_queue(queue)
        validate_worker_id(worker_id)
        ttl = check_duration("lease_ttl", lease_ttl, positive=True)
        with self._world.lock:
            q = self._state.queue(queue)

        def take() -> tuple[bool, list[_Job] | None]:
            check_open(self._session)
            got: list[_Job] = []
            while len(got) < n:
                job = self._state.take(self._session, q, worker_id, ttl)
                if job is None:
                    break
                got.append(job)
            return bool(got), got

        deadline = time.monotonic() + self._options.claim_wait
        _, got = await self._world.poll(self._session, take, q.claims, deadline)
        return [
            ClaimedJob(
                queue,
                job.id,
                job.payload,
                job.attempts,
                job.token,
                _Claim(self._state, self._session, q, job.id, job.token),
                job.dedup_key,
                job.max_attempts,
            )
            for job in got or ()
        ]

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        validate_queue(queue)
        with self._world.lock:
            check_open(self._session)
            q = self._state.queues.get(queue)
            return [] if q is None else [dead for dead, _ in q.dead.values()]

    async def requeue(self, queue: str, job_id: JobId) -> None:
        validate_queue(queue)
        with self._world.lock:
            check_open(self._session)
            q = self._state.queue(queue)
            found = q.dead.pop(job_id, None)
            if found is None:
                raise NotFound("dead letter", job_id)
            dead, max_attempts = found
            job = _Job(queue, dead.id, dead.payload, dead.dedup_key, max_attempts)
            self._state.make_ready(q, job)

    async def discard(self, queue: str, job_id: JobId) -> None:
        validate_queue(queue)
        with self._world.lock:
            check_open(self._session)
            q = self._state.queues.get(queue)
            if q is None or q.dead.pop(job_id, None) is None:
                raise NotFound("dead letter", job_id)

    async def stats(self, queue: str) -> QueueStats:
        validate_queue(queue)
        with self._world.lock:
            check_open(self._session)
            q = self._state.queues.get(queue)
            if q is None:
                return QueueStats(queue, 0, 0, 0, 0)
            states = [j.state for j in q.jobs.values()]
            return QueueStats(
                queue,
                ready=states.count("ready"),
                delayed=states.count("delayed"),
                claimed=states.count("claimed"),
                dead=len(q.dead),
            )
