"""The four async bus interfaces. Their docstrings are the contract every
backend (``memory://``, ``shm://``, ``nats://``) must keep; the conformance
suite in ``tests/conformance`` checks each rule against each backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable

from ._handles import (
    ClaimedJob,
    KvWatch,
    Lease,
    Msg,
    MsgStream,
    Service,
    ack_each,
    take_for_ack,
)
from ._values import (
    DeadLetter,
    Headers,
    Job,
    JobId,
    KvEntry,
    QueueStats,
    Revision,
    check_batch,
)

__all__ = ["Handler", "JobQueue", "KvStore", "Pubsub", "RequestReply"]

Handler = Callable[[bytes], "bytes | Awaitable[bytes]"]
"""A request handler: takes the request payload, returns the reply payload
(or an awaitable of it). An exception reaches the requester as
:class:`~klieo_shm.HandlerError`."""


class Pubsub(ABC):
    """Subject-based publish/subscribe with durable consumers (JetStream's model).

    - ``publish`` stores the message for every durable consumer whose subject
      pattern matches; a message that no durable matches is not stored.
    - Subscribes with the same ``durable`` name form one competing-consumer
      group: each message goes to one member at a time.
    - A durable exists from its first subscribe until :meth:`delete_durable`;
      messages published while no member is connected wait for one.
    - Delivery is at-least-once: an unacked delivery is redelivered after the
      durable's ``ack_wait``, after ``nak(delay)``, or at once when the member
      holding it closes its stream or dies. ``term`` never redelivers.
    - When storage or a limit is full, ``publish`` waits a bounded time and
      then raises :class:`~klieo_shm.Full`; nothing unacked is dropped.
    """

    @abstractmethod
    async def publish(self, subject: str, payload: bytes, headers: Headers | None = None) -> None:
        """Publish ``payload`` on ``subject`` (no wildcards). Returns once the
        message is stored for every matching durable.

        Raises ``InvalidArgument`` for a bad subject or headers,
        ``PayloadTooLarge`` over the backend's limit, ``Full`` on backpressure.
        """

    @abstractmethod
    async def subscribe(
        self, subject: str, durable: str, *, ack_wait: float | None = None
    ) -> MsgStream:
        """Join the durable consumer ``durable`` on ``subject`` (wildcards
        allowed), creating it on first use. New durables start with the
        messages published after their creation.

        ``ack_wait`` (seconds, default 30) is the durable's redelivery timeout;
        given on a later subscribe it updates the durable. Subscribing to an
        existing durable with another subject raises ``InvalidArgument``.
        """

    @abstractmethod
    async def delete_durable(self, durable: str) -> None:
        """Delete a durable consumer and its pending messages; its members'
        streams end. ``NotFound`` if it does not exist."""

    async def ack_many(self, msgs: Iterable[Msg]) -> None:
        """Ack every message of ``msgs`` (from :meth:`MsgStream.next_many`,
        say), as :meth:`Msg.ack` each, as Redis's ``XACK`` of several ids
        does: on shm the acks join the ranged ack frames, with no call per
        message.

        Before anything is acked: :class:`~klieo_shm.AlreadyAcknowledged` if
        a message is resolved already or listed twice,
        :class:`~klieo_shm.InvalidArgument` if an item is not a ``Msg``; then
        none is acked. Otherwise every message is tried, as its ``ack``
        would be (a delivery no longer held is refused with
        :class:`~klieo_shm.Conflict` where ``ack`` refuses it); then the
        first error other than ``Conflict`` is raised, else the first
        ``Conflict``.
        """
        await ack_each(take_for_ack(msgs, Msg))


class RequestReply(ABC):
    """Request/reply: one request, one reply, bounded by a timeout."""

    @abstractmethod
    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """Send ``payload`` to one server of ``subject`` and return its reply.

        Raises ``NotFound`` at once when nobody serves the subject, ``Timeout``
        when no reply comes in ``timeout`` seconds, ``HandlerError`` carrying
        the handler's exception message, and fails at once (``Closed`` or
        ``NotFound``) when the server handling it goes away.
        """

    @abstractmethod
    async def serve(self, subject: str, handler: Handler) -> Service:
        """Serve ``subject`` (no wildcards) with ``handler`` until the service
        is stopped. Servers of one subject share its requests."""


class KvStore(ABC):
    """Bucketed key/value store with revisions, CAS, watch and leases (NATS KV).

    Revisions are per bucket and strictly increasing across its keys: the
    first write in a bucket returns 1. A deleted key is absent.
    """

    @abstractmethod
    async def get(self, bucket: str, key: str) -> KvEntry | None:
        """The key's current value and revision, or ``None`` if absent."""

    @abstractmethod
    async def put(self, bucket: str, key: str, value: bytes) -> Revision:
        """Write unconditionally; returns the new revision."""

    @abstractmethod
    async def cas(self, bucket: str, key: str, value: bytes, expected: Revision | None) -> Revision:
        """Write only if the key's revision is ``expected`` (``None``: only if
        the key is absent). Returns the new revision; on mismatch raises
        ``Conflict`` whose ``current`` is the key's revision (``None`` if absent)."""

    @abstractmethod
    async def delete(self, bucket: str, key: str) -> None:
        """Remove the key. Deleting a missing key succeeds."""

    @abstractmethod
    async def keys(self, bucket: str) -> list[str]:
        """The bucket's present keys, sorted. An unknown bucket has none."""

    @abstractmethod
    async def watch(self, bucket: str, pattern: str = ">") -> KvWatch:
        """Current values of the keys matching ``pattern``, then live changes."""

    @abstractmethod
    async def lease(self, bucket: str, key: str, ttl: float) -> Lease:
        """Take the exclusive lease on ``key`` for ``ttl`` seconds.

        Raises ``Conflict`` (``current`` = the holder's token) while someone
        else holds it. The lease ends on ``release``, on TTL expiry without
        heartbeat, and at once when the holder's process dies. A lease does
        not touch the key's value.
        """


class JobQueue(ABC):
    """Durable competing-consumer job queue; no ordering guarantee.

    A claim ends without an ack by ``nak``, lease expiry or the worker's
    death; each counts as an attempt. After the job's ``max_attempts``
    (default 5) it becomes a dead letter, kept with payload, attempts and
    reason, and published on the subject ``dlq.<queue>`` with the job's payload
    and the headers ``job-id``, ``queue``, ``attempts`` and ``reason``.
    """

    @abstractmethod
    async def enqueue(self, queue: str, job: Job) -> JobId:
        """Add a job; returns its id. With a ``dedup_key`` that has a record in
        the KV bucket ``dedup.<queue>``, returns the recorded id and adds nothing."""

    @abstractmethod
    async def claim(self, queue: str, worker_id: str, lease_ttl: float) -> ClaimedJob | None:
        """Claim a ready job for ``lease_ttl`` seconds, waiting a short bounded
        time (about a second) for one; ``None`` if none came."""

    async def claim_many(
        self, queue: str, worker_id: str, lease_ttl: float, max_jobs: int
    ) -> list[ClaimedJob]:
        """Claim up to ``max_jobs`` ready jobs in one go, as JetStream's
        ``fetch(batch)`` and Redis's ``XREADGROUP COUNT`` do. Each job is a
        claim of its own (own fencing token, lease of ``lease_ttl`` seconds,
        resolved on its own). Waits as :meth:`claim` does only while no job
        is ready; ``[]`` if none came. Fewer than ``max_jobs`` may come
        although more are ready (a backend caps one batch).

        This default claims one job; the backends claim a batch at once.
        """
        check_batch(max_jobs)
        job = await self.claim(queue, worker_id, lease_ttl)
        return [] if job is None else [job]

    async def ack_many(self, jobs: Iterable[ClaimedJob]) -> None:
        """Ack every job of ``jobs``, as :meth:`ClaimedJob.ack` each, in as
        few round trips as the backend can (one socket write on shm).

        Before anything is acked: :class:`~klieo_shm.AlreadyAcknowledged` if
        a job is resolved already or listed twice, and then none is acked. A
        job whose claim was taken over is not acked; the others are, and
        then :class:`~klieo_shm.Conflict` is raised for the first such job.
        Any other error (:class:`~klieo_shm.Closed`, say) is raised after
        every job was tried, each job then resolved as its ``ack`` leaves it.
        """
        await ack_each(take_for_ack(jobs, ClaimedJob))

    @abstractmethod
    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        """The queue's dead letters, oldest first."""

    @abstractmethod
    async def requeue(self, queue: str, job_id: JobId) -> None:
        """Move a dead letter back to the queue with its attempts reset.
        ``NotFound`` if there is no such dead letter."""

    @abstractmethod
    async def discard(self, queue: str, job_id: JobId) -> None:
        """Remove a dead letter for good. ``NotFound`` if there is none."""

    @abstractmethod
    async def stats(self, queue: str) -> QueueStats:
        """Counts of the queue's jobs by state."""
