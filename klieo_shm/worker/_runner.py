"""One worker: claim, heartbeat while the handler runs, ack, nak or dead-letter.

This is the loop every process of a pool runs (see ``_pool.py``), usable on
its own in any event loop. Its contract:

- A claimed job whose ``dedup_key`` record in ``dedup.<queue>`` is already
  marked done is acked without running the handler (a redelivery after a crash
  between "done" and "ack").
- While the handler runs, the claim is heartbeated every ``lease_ttl / 3``.
- The handler returned: the dedup record (if any) is marked done, then the
  job is acked.
- The handler raised: on the job's last attempt the job is dead-lettered with
  the exception as reason; otherwise it is nakked with a capped exponential
  backoff (``backoff_base * 2 ** (attempt - 1)``, at most ``backoff_cap``).
- ``stop`` set: the current job is finished, then the loop returns; a claim
  waiting (for a job, or for the client to reconnect) is given up at once.
- A broker restart is ridden through: an operation that fails with a
  *transient* ``Closed`` (its connection broke while the client reconnects,
  ``exc.transient``) is done again once the client is back -- a claim is
  simply made again; an ack, nak, dead-letter or dedup record is sent again
  with the same token (``Conflict`` then means the first one took effect or
  the claim did not survive: counted as ``lost``). When the client gives up
  reconnecting, the plain ``Closed`` ends the worker with that error.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from .._bus import Bus
from .._errors import BusError, Closed, Conflict
from .._handles import ClaimedJob
from .._values import dedup_record, parse_dedup_record

__all__ = ["JobHandler", "WorkerOptions", "WorkerStats", "backoff_delay", "run_worker"]

log: Final = logging.getLogger("klieo_shm.worker")

JobHandler = Callable[[bytes], object]
"""A job handler: takes the payload; may be a plain or an ``async`` function.
Its return value is ignored; an exception fails the attempt."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker claims and retries.

    ``until_empty``: return once a claim finds nothing and the queue has no
    ready, delayed or claimed job left (for batch runs and tests).
    ``max_jobs``: return after handling this many jobs (``None``: no limit).
    """

    lease_ttl: float = 30.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    until_empty: bool = False
    max_jobs: int | None = None


@dataclass(slots=True)
class WorkerStats:
    """What one worker did."""

    worker_id: str
    acked: int = 0
    failed: int = 0
    dead_lettered: int = 0
    skipped_done: int = 0
    lost: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def handled(self) -> int:
        return self.acked + self.failed + self.dead_lettered + self.skipped_done + self.lost


T = TypeVar("T")

_RETRIES: Final = 5
"""Times one operation is done again after transient connection losses."""


def _transient(exc: BaseException) -> bool:
    """A ``Closed`` from a connection that broke while its client reconnects
    (the shm backend's ``ConnectionInterrupted``): worth doing again."""
    return isinstance(exc, Closed) and bool(getattr(exc, "transient", False))


async def _again(
    what: str, first: Callable[[], Awaitable[T]], retry: Callable[[], Awaitable[T]]
) -> T:
    """``first()``; while it (then ``retry()``) fails with a transient
    ``Closed``, ``retry()`` -- which waits for the client to reconnect."""
    try:
        return await first()
    except Closed as exc:
        if not _transient(exc):
            raise
        log.warning("%s: connection lost, sending it again: %s", what, exc)
    for attempt in range(_RETRIES):
        try:
            return await retry()
        except Closed as exc:
            if not _transient(exc) or attempt == _RETRIES - 1:
                raise
    raise AssertionError("unreachable")


async def _resolve(job: ClaimedJob, op: str, *args: object) -> None:
    """``job.<op>(*args)`` (ack, nak, dead_letter), sent again with the same
    token if the connection broke with it in flight (the handle allows one
    resolution, so the retry goes to its backend impl)."""
    await _again(
        f"job {job.id} {op}",
        lambda: getattr(job, op)(*args),
        lambda: getattr(job._impl, op)(*args),
    )


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retrying after failed ``attempt`` (1-based)."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


def default_worker_id() -> str:
    """``<hostname>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def _call(handler: JobHandler, payload: bytes) -> None:
    if inspect.iscoroutinefunction(handler):
        await handler(payload)
        return
    result = await asyncio.to_thread(handler, payload)
    if inspect.isawaitable(result):
        await result


async def _heartbeat(job: ClaimedJob, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await job.heartbeat()
        except Conflict:
            log.warning("job %s: claim was taken over while its handler ran", job.id)
            return
        except BusError as exc:  # e.g. a reconnect in progress: keep trying
            log.warning("job %s: heartbeat failed: %s", job.id, exc)


async def _is_done(bus: Bus, job: ClaimedJob) -> bool:
    if job.dedup_key is None:
        return False
    bucket, key = f"dedup.{job.queue}", job.dedup_key
    entry = await _again(
        "dedup lookup", lambda: bus.kv.get(bucket, key), lambda: bus.kv.get(bucket, key)
    )
    return entry is not None and parse_dedup_record(entry.value) == (job.id, True)


async def handle_one(
    bus: Bus, job: ClaimedJob, handler: JobHandler, opts: WorkerOptions, stats: WorkerStats
) -> None:
    """Run ``handler`` on one claimed job and resolve the claim (see module doc)."""
    try:
        if await _is_done(bus, job):
            await _resolve(job, "ack")
            stats.skipped_done += 1
            return
        beat = asyncio.create_task(_heartbeat(job, opts.lease_ttl / 3))
        try:
            await _call(handler, job.payload)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            stats.errors.append(reason)
            log.warning("job %s attempt %d failed: %s", job.id, job.attempt, reason)
            if job.max_attempts is not None and job.attempt >= job.max_attempts:
                await _resolve(job, "dead_letter", reason)
                stats.dead_lettered += 1
            else:
                delay = backoff_delay(job.attempt, opts.backoff_base, opts.backoff_cap)
                await _resolve(job, "nak", delay)
                stats.failed += 1
            return
        finally:
            beat.cancel()
        if job.dedup_key is not None:
            bucket, key = f"dedup.{job.queue}", job.dedup_key
            record = dedup_record(job.id, done=True)
            put = lambda: bus.kv.put(bucket, key, record)  # noqa: E731
            await _again("dedup record", put, put)
        await _resolve(job, "ack")
        stats.acked += 1
    except Conflict as exc:
        stats.lost += 1
        log.warning("job %s: claim lost before it was resolved: %s", job.id, exc)


async def _queue_is_drained(bus: Bus, queue: str) -> bool:
    s = await bus.jobs.stats(queue)
    return s.ready + s.delayed + s.claimed == 0


async def run_worker(
    bus: Bus,
    queue: str,
    handler: JobHandler | Callable[[bytes], Awaitable[object]],
    *,
    worker_id: str | None = None,
    options: WorkerOptions | None = None,
    stop: asyncio.Event | None = None,
) -> WorkerStats:
    """Claim and handle jobs of ``queue`` until ``stop`` is set (or, with the
    options, until the queue is drained or ``max_jobs`` were handled)."""
    opts = options or WorkerOptions()
    stop = stop or asyncio.Event()
    stats = WorkerStats(worker_id or default_worker_id())
    me = asyncio.current_task()
    claiming = False
    interrupted = False

    def on_stop(_: object) -> None:
        # A claim may wait long (for a job, or for the client to reconnect
        # while the broker restarts): stopping must not wait for it.
        nonlocal interrupted
        if claiming and me is not None and not me.done():
            interrupted = True
            me.cancel()

    stopper = asyncio.ensure_future(stop.wait())
    stopper.add_done_callback(on_stop)
    try:
        while not stop.is_set():
            if opts.max_jobs is not None and stats.handled >= opts.max_jobs:
                break
            claiming = True
            try:
                job = await bus.jobs.claim(queue, stats.worker_id, opts.lease_ttl)
            except asyncio.CancelledError:
                if interrupted and me is not None and me.uncancel() == 0:
                    break  # cancelled by on_stop, not by our caller
                raise
            except BusError as exc:
                if _transient(exc):
                    log.warning("%s: claim: connection lost, claiming again", stats.worker_id)
                    continue
                stats.errors.append(f"claim: {exc}")
                raise
            finally:
                claiming = False
            if job is None:
                if opts.until_empty and await _queue_is_drained(bus, queue):
                    break
                continue
            await handle_one(bus, job, handler, opts, stats)
    finally:
        stopper.remove_done_callback(on_stop)
        stopper.cancel()
    return stats
