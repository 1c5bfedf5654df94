"""KvStore and JobQueue placeholders for ``shm://`` until the broker serves them.

Arguments are checked as every backend checks them (``InvalidArgument``), a
closed bus raises ``Closed``; anything else raises :class:`~klieo_shm.BusError`
saying the broker does not serve it yet. Nothing is silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from .._errors import BusError, Closed, InvalidArgument
from .._handles import ClaimedJob, KvWatch, Lease
from .._interfaces import JobQueue, KvStore
from .._names import (
    validate_bucket,
    validate_key,
    validate_key_pattern,
    validate_queue,
    validate_worker_id,
)
from .._values import (
    DeadLetter,
    Job,
    JobId,
    KvEntry,
    QueueStats,
    Revision,
    as_bytes,
    check_duration,
)

__all__ = ["UnsupportedJobQueue", "UnsupportedKvStore"]


class _Unsupported:
    def __init__(self, what: str, resource: str, closed: Callable[[], bool]) -> None:
        self._what = what
        self._resource = resource
        self._closed = closed

    def _no(self) -> NoReturn:
        if self._closed():
            raise Closed(self._resource, "this bus was closed")
        raise BusError(
            f"{self._what} is not served by klieo-shmd yet; use memory:// or nats:// for it"
        )


class UnsupportedKvStore(_Unsupported, KvStore):
    def __init__(self, resource: str, closed: Callable[[], bool]) -> None:
        super().__init__("KvStore", resource, closed)

    async def get(self, bucket: str, key: str) -> KvEntry | None:
        validate_bucket(bucket)
        validate_key(key)
        self._no()

    async def put(self, bucket: str, key: str, value: bytes) -> Revision:
        validate_bucket(bucket)
        validate_key(key)
        as_bytes(value, "value")
        self._no()

    async def cas(self, bucket: str, key: str, value: bytes, expected: Revision | None) -> Revision:
        validate_bucket(bucket)
        validate_key(key)
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
            raise InvalidArgument("expected", expected, "must be a revision (int) or None")
        as_bytes(value, "value")
        self._no()

    async def delete(self, bucket: str, key: str) -> None:
        validate_bucket(bucket)
        validate_key(key)
        self._no()

    async def keys(self, bucket: str) -> list[str]:
        validate_bucket(bucket)
        self._no()

    async def watch(self, bucket: str, pattern: str = ">") -> KvWatch:
        validate_bucket(bucket)
        validate_key_pattern(pattern)
        self._no()

    async def lease(self, bucket: str, key: str, ttl: float) -> Lease:
        validate_bucket(bucket)
        validate_key(key)
        check_duration("ttl", ttl, positive=True)
        self._no()


class UnsupportedJobQueue(_Unsupported, JobQueue):
    def __init__(self, resource: str, closed: Callable[[], bool]) -> None:
        super().__init__("JobQueue", resource, closed)

    async def enqueue(self, queue: str, job: Job) -> JobId:
        validate_queue(queue)
        if not isinstance(job, Job):
            raise InvalidArgument("job", job, "must be a klieo_shm.Job")
        self._no()

    async def claim(self, queue: str, worker_id: str, lease_ttl: float) -> ClaimedJob | None:
        validate_queue(queue)
        validate_worker_id(worker_id)
        check_duration("lease_ttl", lease_ttl, positive=True)
        self._no()

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        validate_queue(queue)
        self._no()

    async def requeue(self, queue: str, job_id: JobId) -> None:
        validate_queue(queue)
        self._no()

    async def discard(self, queue: str, job_id: JobId) -> None:
        validate_queue(queue)
        self._no()

    async def stats(self, queue: str) -> QueueStats:
        validate_queue(queue)
        self._no()
