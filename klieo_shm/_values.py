"""Plain values that cross the bus: entries, jobs, dead letters.

Every value is a frozen, slotted dataclass. Payloads are ``bytes``; the
public API accepts any bytes-like input and copies it once into ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from ._errors import InvalidArgument

__all__ = [
    "DEFAULT_ACK_WAIT",
    "DEFAULT_MAX_ATTEMPTS",
    "NEEDS_ROUND_TRIP",
    "DeadLetter",
    "Headers",
    "Job",
    "JobId",
    "KvChange",
    "KvEntry",
    "QueueStats",
    "Revision",
    "as_bytes",
    "check_batch",
    "check_duration",
    "check_headers",
    "dedup_record",
    "parse_dedup_record",
]

Headers: TypeAlias = dict[str, str]
"""Opaque string headers that travel with a message."""

JobId: TypeAlias = str
"""A job's stable id, unique within its queue."""

Revision: TypeAlias = int
"""A KV revision: the bucket's sequence number after a write (first is 1)."""

DEFAULT_ACK_WAIT: Final = 30.0
"""Seconds a delivery may stay unacknowledged before it is redelivered."""

DEFAULT_MAX_ATTEMPTS: Final = 5
"""Claims a job gets before it becomes a dead letter, unless it says otherwise."""


def as_bytes(payload: object, what: str = "payload") -> bytes:
    """``payload`` as ``bytes``; any bytes-like object is accepted (copied once)."""
    if type(payload) is bytes:
        return payload
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    raise InvalidArgument(
        what, type(payload).__name__, "must be bytes-like (bytes, bytearray, memoryview)"
    )


def check_duration(what: str, seconds: float, *, positive: bool = False) -> float:
    """``seconds`` as a float, refusing negatives (and zero when ``positive``)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidArgument(what, seconds, "must be a number of seconds")
    value = float(seconds)
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidArgument(what, seconds, "must be finite")
    if value < 0 or (positive and value == 0):
        raise InvalidArgument(what, seconds, "must be > 0" if positive else "must be >= 0")
    return value


def check_batch(size: int, name: str = "max_jobs") -> int:
    """A batch size (``max_jobs`` of ``JobQueue.claim_many``, ``max_msgs``
    of ``MsgStream.next_many``): an int of at least 1."""
    if type(size) is not int or size < 1:
        raise InvalidArgument(name, size, "must be an int of at least 1")
    return size


def check_headers(headers: object) -> Headers:
    """A copy of ``headers`` (``None`` gives an empty dict); keys and values must be str."""
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise InvalidArgument("headers", headers, "must be a dict[str, str] or None")
    for k, v in headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgument("headers", headers, "keys and values must be str")
    return dict(headers)


@dataclass(frozen=True, slots=True)
class KvEntry:
    """A key's value and the revision of the write that stored it."""

    value: bytes
    revision: Revision


class _NeedsRoundTrip:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEEDS_ROUND_TRIP"


NEEDS_ROUND_TRIP: Final = _NeedsRoundTrip()
"""What a backend's optional ``KvStore.get_local`` returns when it cannot
answer in the calling thread (the blocking flavour then asks the loop)."""


@dataclass(frozen=True, slots=True)
class KvChange:
    """One event from ``KvStore.watch``: a current value or a later change.

    ``operation`` is ``"put"`` (``value`` holds the new value) or ``"delete"``
    (``value`` is empty). ``revision`` is the bucket revision of the change.
    """

    bucket: str
    key: str
    value: bytes
    revision: Revision
    operation: Literal["put", "delete"] = "put"


@dataclass(frozen=True, slots=True, init=False)
class Job:
    """A unit of work for ``JobQueue.enqueue``.

    ``dedup_key``: enqueueing a job whose key already has a record in the KV
    bucket ``dedup.<queue>`` returns the original id and enqueues nothing.
    ``max_attempts``: claims before the job becomes a dead letter
    (``None``: the default of 5).
    """

    payload: bytes
    dedup_key: str | None = None
    max_attempts: int | None = None

    def __init__(
        self, payload: bytes, dedup_key: str | None = None, max_attempts: int | None = None
    ) -> None:
        # The fields are set through their slots: the generated frozen
        # __init__ (object.__setattr__ per field, then __post_init__) cost
        # 1.4 us per Job, most of a pipelined enqueue's time.
        _set_payload(self, payload if type(payload) is bytes else as_bytes(payload))
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise InvalidArgument("max_attempts", max_attempts, "must be an int >= 1 or None")
        _set_max_attempts(self, max_attempts)
        if dedup_key is not None:
            from ._names import validate_key

            validate_key(dedup_key)
        _set_dedup_key(self, dedup_key)


_set_payload = Job.__dict__["payload"].__set__
_set_dedup_key = Job.__dict__["dedup_key"].__set__
_set_max_attempts = Job.__dict__["max_attempts"].__set__


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job that will not be retried: its payload, the claims it got and why.

    Kept until removed (``JobQueue.discard``) or requeued (``JobQueue.requeue``).
    """

    id: JobId
    queue: str
    payload: bytes
    attempts: int
    reason: str
    dedup_key: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts of a queue's jobs by state, as the backend saw them at one instant."""

    queue: str
    ready: int
    delayed: int
    claimed: int
    dead: int
    extra: dict[str, int] = field(default_factory=dict)


DEDUP_DONE: Final = b" done"


def dedup_record(job_id: JobId, *, done: bool = False) -> bytes:
    """The value of a job's record in the KV bucket ``dedup.<queue>``: the job
    id, followed by `` done`` once a worker finished the job (job ids contain
    no space)."""
    return job_id.encode() + (DEDUP_DONE if done else b"")


def parse_dedup_record(value: bytes) -> tuple[JobId, bool]:
    """``(job_id, done)`` from a record written by :func:`dedup_record`."""
    done = value.endswith(DEDUP_DONE)
    raw = value[: -len(DEDUP_DONE)] if done else value
    return raw.decode(), done
