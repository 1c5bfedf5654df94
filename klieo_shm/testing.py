"""Helpers for tests of code that uses the bus.

:func:`noop_bus` gives the four interfaces doing nothing, as klieo-core's
``test_utils::noop_bus`` does: ``publish`` succeeds, ``request`` raises
``NotFound``, ``put`` returns 1, 2, 3…, ``enqueue`` returns ``"noop-0"``,
``"noop-1"``…, reads find nothing and ``claim`` returns ``None``.
"""

from __future__ import annotations

import asyncio
import itertools

from ._errors import NotFound
from ._handles import ClaimedJob, KvWatch, Lease, Msg, MsgStream, Service
from ._interfaces import Handler, JobQueue, KvStore, Pubsub, RequestReply
from ._names import (
    validate_bucket,
    validate_durable,
    validate_key,
    validate_key_pattern,
    validate_queue,
    validate_subject,
    validate_subject_pattern,
)
from ._values import DeadLetter, Headers, Job, JobId, KvEntry, QueueStats, Revision, as_bytes

__all__ = ["noop_bus"]


class _Silent:
    """A stream, service and lease impl that never yields and ends on close."""

    def __init__(self) -> None:
        self._closed = asyncio.Event()

    async def next(self) -> None:
        await self._closed.wait()

    def take_ready(self, n: int) -> list[Msg]:
        return []

    async def close(self) -> None:
        self._closed.set()

    async def stop(self) -> None:
        self._closed.set()

    async def heartbeat(self) -> None:
        return None

    async def release(self) -> None:
        return None


class NoopPubsub(Pubsub):
    async def publish(self, subject: str, payload: bytes, headers: Headers | None = None) -> None:
        validate_subject(subject)
        as_bytes(payload)

    async def subscribe(
        self, subject: str, durable: str, *, ack_wait: float | None = None
    ) -> MsgStream:
        validate_subject_pattern(subject)
        validate_durable(durable)
        return MsgStream(_Silent())

    async def delete_durable(self, durable: str) -> None:
        raise NotFound("durable", validate_durable(durable))


class NoopRequestReply(RequestReply):
    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        raise NotFound("server for subject", validate_subject(subject))

    async def serve(self, subject: str, handler: Handler) -> Service:
        return Service(validate_subject(subject), _Silent())


class NoopKvStore(KvStore):
    def __init__(self) -> None:
        self._revisions = itertools.count(1)

    async def get(self, bucket: str, key: str) -> KvEntry | None:
        validate_bucket(bucket)
        validate_key(key)
        return None

    async def put(self, bucket: str, key: str, value: bytes) -> Revision:
        validate_bucket(bucket)
        validate_key(key)
        as_bytes(value)
        return next(self._revisions)

    async def cas(self, bucket: str, key: str, value: bytes, expected: Revision | None) -> Revision:
        return await self.put(bucket, key, value)

    async def delete(self, bucket: str, key: str) -> None:
        validate_bucket(bucket)
        validate_key(key)

    async def keys(self, bucket: str) -> list[str]:
        validate_bucket(bucket)
        return []

    async def watch(self, bucket: str, pattern: str = ">") -> KvWatch:
        validate_bucket(bucket)
        validate_key_pattern(pattern)
        return KvWatch(_Silent())

    async def lease(self, bucket: str, key: str, ttl: float) -> Lease:
        validate_bucket(bucket)
        validate_key(key)
        return Lease(bucket, key, ttl, 1, _Silent())


class NoopJobQueue(JobQueue):
    def __init__(self) -> None:
        self._ids = itertools.count()

    async def enqueue(self, queue: str, job: Job) -> JobId:
        validate_queue(queue)
        return f"noop-{next(self._ids)}"

    async def claim(self, queue: str, worker_id: str, lease_ttl: float) -> ClaimedJob | None:
        validate_queue(queue)
        return None

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        validate_queue(queue)
        return []

    async def requeue(self, queue: str, job_id: JobId) -> None:
        raise NotFound("dead letter", job_id)

    async def discard(self, queue: str, job_id: JobId) -> None:
        raise NotFound("dead letter", job_id)

    async def stats(self, queue: str) -> QueueStats:
        return QueueStats(validate_queue(queue), 0, 0, 0, 0)


def noop_bus() -> tuple[NoopPubsub, NoopRequestReply, NoopKvStore, NoopJobQueue]:
    """The four interfaces, doing nothing (see the module docstring)."""
    return NoopPubsub(), NoopRequestReply(), NoopKvStore(), NoopJobQueue()
