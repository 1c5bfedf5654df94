"""Handles the async interfaces hand out: deliveries, streams, services,
leases and claims.

Each handle is a concrete class over a small backend *impl* object (the
``*Impl`` protocols below), as klieo-core's ``AckHandle(Box<dyn AckHandleImpl>)``
is. The handle enforces the rules every backend shares — exactly one of
ack/nak/term per delivery, exactly one of ack/nak/dead_letter per claim,
argument checks — so an impl only carries out an operation.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Generic, Protocol, TypeVar, cast

from ._errors import AlreadyAcknowledged, Conflict, InvalidArgument, Timeout
from ._values import Headers, JobId, KvChange, check_batch, check_duration

__all__ = [
    "AckImpl",
    "ClaimImpl",
    "ClaimedJob",
    "KvWatch",
    "Lease",
    "LeaseImpl",
    "Msg",
    "MsgStream",
    "MsgStreamImpl",
    "Service",
    "ServiceImpl",
    "StreamImpl",
    "ack_each",
    "ack_impl",
    "claim_impl",
    "take_for_ack",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class AckImpl(Protocol):
    """Backend side of a delivery's acknowledgement. Called at most once for
    ack/nak/term; ``in_progress`` any number of times before that."""

    async def ack(self) -> None: ...
    async def nak(self, delay: float) -> None: ...
    async def term(self) -> None: ...
    async def in_progress(self) -> None: ...


class _Resolvable:
    __slots__ = ("_resolved_by",)

    def __init__(self) -> None:
        self._resolved_by: str | None = None

    @property
    def resolved(self) -> bool:
        """Whether one of the resolving operations was called."""
        return self._resolved_by is not None

    def _claim_resolution(self, what: str, op: str) -> None:
        if self._resolved_by is not None:
            raise AlreadyAcknowledged(what, self._resolved_by)
        self._resolved_by = op

    def _check_open(self, what: str) -> None:
        if self._resolved_by is not None:
            raise AlreadyAcknowledged(what, self._resolved_by)


class Msg(_Resolvable):
    """One delivery of a message to a durable consumer.

    ``seq`` is the message's sequence in its stream (the same across
    redeliveries); ``delivery_count`` is 1 on first delivery. Exactly one of
    :meth:`ack`, :meth:`nak`, :meth:`term` may be called; a second raises
    :class:`~klieo_shm.AlreadyAcknowledged`. Without any of them the message
    is redelivered after the consumer's ``ack_wait``, or at once when the
    member holding it goes away.

    A delivery belongs to the connection it came on. On the ``shm`` backend,
    once the client has reconnected to the broker (after a broker restart),
    ack/nak/term/in_progress of a message delivered before do nothing (its
    delivery id means nothing on the new connection) and the broker
    redelivers that message: at-least-once, never an error.
    """

    __slots__ = ("_impl", "delivery_count", "headers", "payload", "seq", "subject")

    def __init__(
        self,
        subject: str,
        payload: bytes,
        headers: Headers,
        seq: int,
        delivery_count: int,
        impl: AckImpl,
    ) -> None:
        self._resolved_by = None  # _Resolvable's state, set here: one call less per object
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.seq = seq
        self.delivery_count = delivery_count
        self._impl = impl

    def __repr__(self) -> str:
        return (
            f"Msg(subject={self.subject!r}, seq={self.seq}, "
            f"delivery_count={self.delivery_count}, payload_len={len(self.payload)})"
        )

    async def ack(self) -> None:
        """Processing succeeded: the message is never delivered again."""
        self._claim_resolution("message", "ack")
        await self._impl.ack()

    async def nak(self, delay: float = 0.0) -> None:
        """Processing failed: redeliver after ``delay`` seconds (0 = now)."""
        delay = check_duration("delay", delay)
        self._claim_resolution("message", "nak")
        await self._impl.nak(delay)

    async def term(self) -> None:
        """Give up on the message: it is never delivered again."""
        self._claim_resolution("message", "term")
        await self._impl.term()

    async def in_progress(self) -> None:
        """Still working: restart this delivery's ``ack_wait`` clock."""
        self._check_open("message")
        await self._impl.in_progress()


class StreamImpl(Protocol[T_co]):
    """Backend side of a stream. ``next`` waits for the next item and returns
    ``None`` once the stream is closed; cancelling ``next`` loses no item."""

    async def next(self) -> T_co | None: ...
    async def close(self) -> None: ...


class _Stream(Generic[T]):
    __slots__ = ("_closed", "_impl")

    def __init__(self, impl: StreamImpl[T]) -> None:
        self._impl = impl
        self._closed = False

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._impl.next()
        if item is None:
            raise StopAsyncIteration
        return item

    async def next(self, timeout: float | None = None) -> T | None:
        """The next item, or ``None`` once the stream is closed. With a
        ``timeout``, raise :class:`~klieo_shm.Timeout` when nothing came."""
        if timeout is None:
            return await self._impl.next()
        timeout = check_duration("timeout", timeout)
        try:
            return await asyncio.wait_for(self._impl.next(), timeout)
        except TimeoutError:
            raise Timeout("next", timeout) from None

    async def close(self) -> None:
        """End the stream. Idempotent; a pending ``next`` returns ``None``."""
        if self._closed:
            return
        self._closed = True
        await self._impl.close()

    async def __aenter__(self: _S) -> _S:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


_S = TypeVar("_S", bound="_Stream[object]")


class MsgStreamImpl(StreamImpl[Msg], Protocol):
    """Backend side of a :class:`MsgStream`: also hands out deliveries that
    have arrived already, without waiting."""

    def take_ready(self, n: int) -> list[Msg]:
        """Up to ``n`` deliveries that are ready now (maybe none), in order."""
        ...


class MsgStream(_Stream[Msg]):
    """The deliveries of one member of a durable consumer group.

    Iterate with ``async for``, or take batches with :meth:`next_many`.
    :meth:`close` ends the membership: the durable stays, and this member's
    unacknowledged deliveries go to the other members at once.
    """

    __slots__ = ()

    def __init__(self, impl: MsgStreamImpl) -> None:
        super().__init__(impl)

    async def next_many(self, max_msgs: int, timeout: float | None = None) -> list[Msg]:
        """Up to ``max_msgs`` deliveries, as JetStream's ``fetch(batch)``:
        waits as :meth:`next` does for the first one (with ``timeout``,
        :class:`~klieo_shm.Timeout` when none came), then adds those that are
        ready at once, without waiting for more. ``[]`` once the stream is
        closed. Each is a delivery of its own, resolved on its own or with
        :meth:`Pubsub.ack_many <klieo_shm.Pubsub.ack_many>`."""
        check_batch(max_msgs, "max_msgs")
        first = await self.next(timeout)
        if first is None:
            return []
        if max_msgs == 1:
            return [first]
        batch = cast(MsgStreamImpl, self._impl).take_ready(max_msgs - 1)
        batch.insert(0, first)
        return batch


class KvWatch(_Stream[KvChange]):
    """Changes in a bucket: first every current value matching the pattern,
    then each later put and delete, in revision order. :meth:`close` ends it."""

    __slots__ = ()


class ServiceImpl(Protocol):
    """Backend side of a request server."""

    async def stop(self) -> None: ...


class Service:
    """A handler serving a subject. Servers of one subject share its requests.

    :meth:`stop` stops taking requests; idempotent.
    """

    __slots__ = ("_impl", "_stopped", "subject")

    def __init__(self, subject: str, impl: ServiceImpl) -> None:
        self.subject = subject
        self._impl = impl
        self._stopped = False

    async def stop(self) -> None:
        """Stop serving. Requests already taken still get their reply."""
        if self._stopped:
            return
        self._stopped = True
        await self._impl.stop()

    async def __aenter__(self) -> Service:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class LeaseImpl(Protocol):
    """Backend side of a lease; ``token`` identifies the grant (fencing)."""

    async def heartbeat(self) -> None: ...
    async def release(self) -> None: ...


class Lease:
    """An exclusive lease on (``bucket``, ``key``), valid for ``ttl`` seconds
    from the last grant or heartbeat, and ended at once when its holder's
    process dies.

    ``token`` is the fencing token: it increases with every grant of the same
    key. A heartbeat or release after the lease was lost raises
    :class:`~klieo_shm.Conflict`. ``async with`` releases on exit.
    """

    __slots__ = ("_impl", "_released", "bucket", "key", "token", "ttl")

    def __init__(self, bucket: str, key: str, ttl: float, token: int, impl: LeaseImpl) -> None:
        self.bucket = bucket
        self.key = key
        self.ttl = ttl
        self.token = token
        self._impl = impl
        self._released = False

    def __repr__(self) -> str:
        return f"Lease(bucket={self.bucket!r}, key={self.key!r}, token={self.token})"

    async def heartbeat(self) -> None:
        """Extend the lease by ``ttl`` from now; ``Conflict`` if it was lost."""
        await self._impl.heartbeat()

    async def release(self) -> None:
        """End the lease. A second release does nothing; ``Conflict`` if the
        lease was already taken over by someone else."""
        if self._released:
            return
        self._released = True
        await self._impl.release()

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


class ClaimImpl(Protocol):
    """Backend side of a job claim; each resolving call is made at most once."""

    async def heartbeat(self) -> None: ...
    async def ack(self) -> None: ...
    async def nak(self, delay: float) -> None: ...
    async def dead_letter(self, reason: str) -> None: ...


class ClaimedJob(_Resolvable):
    """A job claimed by one worker for ``lease_ttl`` seconds.

    ``attempt`` is 1 on the first claim. ``token`` is the claim's fencing
    token. ``dedup_key`` is the job's idempotency key, if any, and
    ``max_attempts`` the claims it gets before it becomes a dead letter (``None``
    when the backend does not know). Exactly one of :meth:`ack`, :meth:`nak`,
    :meth:`dead_letter` may be called; any of them, or :meth:`heartbeat`,
    after the claim was taken over (TTL expiry) raises :class:`~klieo_shm.Conflict`.
    """

    __slots__ = (
        "_impl",
        "attempt",
        "dedup_key",
        "id",
        "max_attempts",
        "payload",
        "queue",
        "token",
    )

    def __init__(
        self,
        queue: str,
        id: JobId,
        payload: bytes,
        attempt: int,
        token: int,
        impl: ClaimImpl,
        dedup_key: str | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self._resolved_by = None  # _Resolvable's state, set here: one call less per object
        self.queue = queue
        self.id = id
        self.payload = payload
        self.attempt = attempt
        self.token = token
        self.dedup_key = dedup_key
        self.max_attempts = max_attempts
        self._impl = impl

    def __repr__(self) -> str:
        return f"ClaimedJob(queue={self.queue!r}, id={self.id!r}, attempt={self.attempt})"

    async def heartbeat(self) -> None:
        """Extend the claim by its ``lease_ttl`` from now."""
        self._check_open("job")
        await self._impl.heartbeat()

    async def ack(self) -> None:
        """The job is done and removed."""
        self._claim_resolution("job", "ack")
        await self._impl.ack()

    async def nak(self, delay: float = 0.0) -> None:
        """Retry after ``delay`` seconds; counts as an attempt. Past the
        job's max_attempts it becomes a dead letter instead."""
        delay = check_duration("delay", delay)
        self._claim_resolution("job", "nak")
        await self._impl.nak(delay)

    async def dead_letter(self, reason: str) -> None:
        """Move the job to the dead letters now, with ``reason``."""
        self._claim_resolution("job", "dead_letter")
        await self._impl.dead_letter(str(reason))


_R = TypeVar("_R", "Msg", "ClaimedJob")


def take_for_ack(items: Iterable[_R], kind: type[_R]) -> list[_R]:
    """``items`` as a list, each now resolved by ``ack``: the checks of
    ``ack`` (:meth:`Msg.ack`, :meth:`ClaimedJob.ack`) for a batch, all done
    before any item is marked. :class:`~klieo_shm.AlreadyAcknowledged` if
    one is resolved already or listed twice,
    :class:`~klieo_shm.InvalidArgument` if one is not a ``kind``; then no
    item is marked."""
    what = "message" if kind is Msg else "job"
    batch = list(items)
    if not all(map(isinstance, batch, itertools.repeat(kind))):
        bad = next(item for item in batch if not isinstance(item, kind))
        raise InvalidArgument(f"{what}s", type(bad).__name__, f"must hold {kind.__name__} objects")
    for i, item in enumerate(batch):
        if item._resolved_by is not None:  # resolved before, or listed twice
            twice = any(item is earlier for earlier in batch[:i])
            for earlier in batch[:i]:
                earlier._resolved_by = None
            raise AlreadyAcknowledged(what, "ack" if twice else item._resolved_by)
        item._resolved_by = "ack"
    return batch


async def ack_each(batch: Sequence[Msg | ClaimedJob]) -> None:
    """Ack each item of ``batch`` (from :func:`take_for_ack`) through its
    own impl, one after the other. Every item is tried; then the first error
    other than :class:`~klieo_shm.Conflict` is raised, else the first
    ``Conflict``. When cancelled, the items not tried yet are open again."""
    lost: Conflict | None = None
    failed: Exception | None = None
    for i, item in enumerate(batch):
        try:
            await item._impl.ack()
        except Conflict as exc:
            lost = lost or exc
        except asyncio.CancelledError:
            for rest in batch[i + 1 :]:
                rest._resolved_by = None
            raise
        except Exception as exc:
            failed = failed or exc
    if failed is not None:
        raise failed
    if lost is not None:
        raise lost


def claim_impl(job: ClaimedJob) -> ClaimImpl:
    """The backend side of ``job`` (for a backend's batch operations)."""
    return job._impl


def ack_impl(msg: Msg) -> AckImpl:
    """The backend side of ``msg`` (for a backend's batch operations)."""
    return msg._impl
