"""The blocking flavour: the same interfaces as the async API, without ``await``.

``klieo_shm.sync.connect(url=None)`` returns a :class:`Bus` whose
``pubsub``, ``requests``, ``kv`` and ``jobs`` have the async interfaces'
methods and contracts, blocking until done. It suits ``multiprocessing``
workers and scripts. A bus runs its async backend on a private event-loop
thread; a bus used in a forked child notices the new pid and reconnects on
first use (handles taken before the fork — streams, leases, claims — belong
to the parent and are not usable in the child). Request handlers given to
``serve`` run in a worker thread, so they may block. Two calls skip the hop
to the loop thread when they can: a KV ``get`` reads the mapped table, and a
``request`` on a direct route the bus already knows goes on a socket of the
calling thread (see ``klieo_shm.shm._thread_links``).

A broker restart is ridden through as by the async flavour (its client
reconnects on the loop thread): streams, services and watches resume, and a
blocking call made while the client reconnects waits for it (bounded by the
reconnect window, see :mod:`klieo_shm.shm`).

``?spin_us=N`` in a ``shm://`` URL runs that thread's loop as a
:class:`klieo_shm.SpinningEventLoop`: it polls for up to N microseconds for
the broker's answer before it sleeps (lower latency, a busy core meanwhile;
other backends never spin).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

from . import _bus
from . import _handles as h
from ._errors import Closed, InvalidArgument
from ._portal import Portal
from ._spin import spin_us_of
from ._values import (
    NEEDS_ROUND_TRIP,
    DeadLetter,
    Headers,
    Job,
    JobId,
    KvChange,
    KvEntry,
    QueueStats,
    Revision,
)

__all__ = [
    "Bus",
    "ClaimedJob",
    "JobQueue",
    "KvStore",
    "KvWatch",
    "Lease",
    "Msg",
    "MsgStream",
    "Pubsub",
    "RequestReply",
    "Service",
    "connect",
]

T = TypeVar("T")
A = TypeVar("A")


class _Link:
    """The async bus behind a blocking one, reopened after fork."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.spin_us = spin_us_of(url)
        self._lock = threading.Lock()
        self.closed = False
        self.portal = Portal(spin_us=self.spin_us)
        self.bus: _bus.Bus = self.portal.call(_bus.connect(url))
        self.kv_get_local = _get_local(self.bus)
        self.request_local = _request_local(self.bus)

    def run(self, make: Callable[[_bus.Bus], Coroutine[Any, Any, T]]) -> T:
        with self._lock:
            if self.closed:
                raise Closed(self.url)
            if not self.portal.owned_here:
                self.kv_get_local = self.request_local = None
                self.portal = Portal(spin_us=self.spin_us)
                self.bus = self.portal.call(_bus.connect(self.url))
                self.kv_get_local = _get_local(self.bus)
                self.request_local = _request_local(self.bus)
            portal, bus = self.portal, self.bus
        return portal.call(make(bus))

    def close(self) -> None:
        with self._lock:
            self.closed = True
        if not self.portal.owned_here:
            return
        try:
            self.portal.call(self.bus.close())
        finally:
            self.portal.stop()


def _get_local(bus: _bus.Bus) -> Callable[[str, str], Any] | None:
    """The backend's optional thread-safe ``kv.get_local``, if it has one."""
    return getattr(bus.kv, "get_local", None)


def _request_local(bus: _bus.Bus) -> Callable[[str, bytes, float, float], Any] | None:
    """The backend's optional thread-safe ``requests.request_local``."""
    return getattr(bus.requests, "request_local", None)


class _Handle(Generic[A]):
    __slots__ = ("_inner", "_portal")

    def __init__(self, portal: Portal, inner: A) -> None:
        self._portal = portal
        self._inner = inner


class Msg(_Handle[h.Msg]):
    """A delivery; see :class:`klieo_shm.Msg`."""

    __slots__ = ()

    subject = property(lambda self: self._inner.subject)
    payload = property(lambda self: self._inner.payload)
    headers = property(lambda self: self._inner.headers)
    seq = property(lambda self: self._inner.seq)
    delivery_count = property(lambda self: self._inner.delivery_count)
    resolved = property(lambda self: self._inner.resolved)

    def __repr__(self) -> str:
        return repr(self._inner)

    def ack(self) -> None:
        self._portal.call(self._inner.ack())

    def nak(self, delay: float = 0.0) -> None:
        self._portal.call(self._inner.nak(delay))

    def term(self) -> None:
        self._portal.call(self._inner.term())

    def in_progress(self) -> None:
        self._portal.call(self._inner.in_progress())


class _Stream(_Handle[A], Generic[A, T]):
    __slots__ = ()

    def _wrap(self, item: Any) -> T:
        return item  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        item = self.next()
        if item is None:
            raise StopIteration
        return item

    def next(self, timeout: float | None = None) -> T | None:
        """The next item, ``None`` once closed (also once its bus is closed);
        ``Timeout`` after ``timeout``."""
        if self._portal.stopped:
            return None
        item = self._portal.call(self._inner.next(timeout))  # type: ignore[attr-defined]
        return None if item is None else self._wrap(item)

    def close(self) -> None:
        if not self._portal.stopped:
            self._portal.call(self._inner.close())  # type: ignore[attr-defined]

    def __enter__(self: _SS) -> _SS:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_SS = TypeVar("_SS", bound="_Stream[Any, Any]")


class MsgStream(_Stream[h.MsgStream, Msg]):
    """A member's deliveries; see :class:`klieo_shm.MsgStream`."""

    __slots__ = ()

    def _wrap(self, item: Any) -> Msg:
        return Msg(self._portal, item)

    def next_many(self, max_msgs: int, timeout: float | None = None) -> list[Msg]:
        """As :meth:`klieo_shm.MsgStream.next_many`; ``[]`` also once its
        bus is closed."""
        if self._portal.stopped:
            return []
        inner = self._portal.call(self._inner.next_many(max_msgs, timeout))
        return [Msg(self._portal, msg) for msg in inner]


class KvWatch(_Stream[h.KvWatch, KvChange]):
    """Changes in a bucket; see :class:`klieo_shm.KvWatch`."""

    __slots__ = ()


class Service(_Handle[h.Service]):
    """A request server; see :class:`klieo_shm.Service`."""

    __slots__ = ()

    subject = property(lambda self: self._inner.subject)

    def stop(self) -> None:
        self._portal.call(self._inner.stop())

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Lease(_Handle[h.Lease]):
    """An exclusive lease; see :class:`klieo_shm.Lease`."""

    __slots__ = ()

    bucket = property(lambda self: self._inner.bucket)
    key = property(lambda self: self._inner.key)
    ttl = property(lambda self: self._inner.ttl)
    token = property(lambda self: self._inner.token)

    def __repr__(self) -> str:
        return repr(self._inner)

    def heartbeat(self) -> None:
        self._portal.call(self._inner.heartbeat())

    def release(self) -> None:
        self._portal.call(self._inner.release())

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ClaimedJob(_Handle[h.ClaimedJob]):
    """A claimed job; see :class:`klieo_shm.ClaimedJob`."""

    __slots__ = ()

    queue = property(lambda self: self._inner.queue)
    id = property(lambda self: self._inner.id)
    payload = property(lambda self: self._inner.payload)
    attempt = property(lambda self: self._inner.attempt)
    token = property(lambda self: self._inner.token)
    dedup_key = property(lambda self: self._inner.dedup_key)
    max_attempts = property(lambda self: self._inner.max_attempts)
    resolved = property(lambda self: self._inner.resolved)

    def __repr__(self) -> str:
        return repr(self._inner)

    def heartbeat(self) -> None:
        self._portal.call(self._inner.heartbeat())

    def ack(self) -> None:
        self._portal.call(self._inner.ack())

    def nak(self, delay: float = 0.0) -> None:
        self._portal.call(self._inner.nak(delay))

    def dead_letter(self, reason: str) -> None:
        self._portal.call(self._inner.dead_letter(reason))


class _Facade:
    __slots__ = ("_link",)

    def __init__(self, link: _Link) -> None:
        self._link = link


def _unwrap(
    items: Iterable[object], kind: type[_Handle[Any]], portal: Portal, what: str
) -> list[Any]:
    """The async handles behind ``items`` (blocking handles of ``kind``);
    other objects are left for the async call to refuse. ``InvalidArgument``
    if one belongs to another bus: each bus runs its own loop."""
    batch = list(items)
    if any(isinstance(item, kind) and item._portal is not portal for item in batch):
        raise InvalidArgument(what, "one of another bus", "must come from this bus")
    return [item._inner if isinstance(item, kind) else item for item in batch]


class Pubsub(_Facade):
    """Blocking :class:`klieo_shm.Pubsub`."""

    __slots__ = ()

    def publish(self, subject: str, payload: bytes, headers: Headers | None = None) -> None:
        self._link.run(lambda b: b.pubsub.publish(subject, payload, headers))

    def subscribe(self, subject: str, durable: str, *, ack_wait: float | None = None) -> MsgStream:
        inner = self._link.run(lambda b: b.pubsub.subscribe(subject, durable, ack_wait=ack_wait))
        return MsgStream(self._link.portal, inner)

    def delete_durable(self, durable: str) -> None:
        self._link.run(lambda b: b.pubsub.delete_durable(durable))

    def ack_many(self, msgs: Iterable[Msg]) -> None:
        """As :meth:`klieo_shm.Pubsub.ack_many`, for messages delivered on
        this bus (``InvalidArgument``, nothing acked, for one of another)."""
        inner = _unwrap(msgs, Msg, self._link.portal, "messages")
        self._link.run(lambda b: b.pubsub.ack_many(inner))


class RequestReply(_Facade):
    """Blocking :class:`klieo_shm.RequestReply`; handlers run in a thread."""

    __slots__ = ()

    def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        link = self._link
        local = link.request_local
        if local is not None and not link.closed and link.portal.owned_here:
            found = local(subject, payload, timeout, link.spin_us)  # no loop hop
            if found is not NEEDS_ROUND_TRIP:
                return found  # type: ignore[no-any-return]
        return link.run(lambda b: b.requests.request(subject, payload, timeout))

    def serve(self, subject: str, handler: Callable[[bytes], bytes]) -> Service:
        async def in_thread(payload: bytes) -> bytes:
            return await asyncio.to_thread(handler, payload)

        inner = self._link.run(lambda b: b.requests.serve(subject, in_thread))
        return Service(self._link.portal, inner)


class KvStore(_Facade):
    """Blocking :class:`klieo_shm.KvStore`."""

    __slots__ = ()

    def get(self, bucket: str, key: str) -> KvEntry | None:
        link = self._link
        local = link.kv_get_local
        if local is not None and not link.closed and link.portal.owned_here:
            found = local(bucket, key)  # read in this thread: no loop hop
            if found is not NEEDS_ROUND_TRIP:
                return found  # type: ignore[no-any-return]
        return link.run(lambda b: b.kv.get(bucket, key))

    def put(self, bucket: str, key: str, value: bytes) -> Revision:
        return self._link.run(lambda b: b.kv.put(bucket, key, value))

    def cas(self, bucket: str, key: str, value: bytes, expected: Revision | None) -> Revision:
        return self._link.run(lambda b: b.kv.cas(bucket, key, value, expected))

    def delete(self, bucket: str, key: str) -> None:
        self._link.run(lambda b: b.kv.delete(bucket, key))

    def keys(self, bucket: str) -> list[str]:
        return self._link.run(lambda b: b.kv.keys(bucket))

    def watch(self, bucket: str, pattern: str = ">") -> KvWatch:
        return KvWatch(self._link.portal, self._link.run(lambda b: b.kv.watch(bucket, pattern)))

    def lease(self, bucket: str, key: str, ttl: float) -> Lease:
        return Lease(self._link.portal, self._link.run(lambda b: b.kv.lease(bucket, key, ttl)))


class JobQueue(_Facade):
    """Blocking :class:`klieo_shm.JobQueue`."""

    __slots__ = ()

    def enqueue(self, queue: str, job: Job) -> JobId:
        return self._link.run(lambda b: b.jobs.enqueue(queue, job))

    def claim(self, queue: str, worker_id: str, lease_ttl: float) -> ClaimedJob | None:
        inner = self._link.run(lambda b: b.jobs.claim(queue, worker_id, lease_ttl))
        return None if inner is None else ClaimedJob(self._link.portal, inner)

    def claim_many(
        self, queue: str, worker_id: str, lease_ttl: float, max_jobs: int
    ) -> list[ClaimedJob]:
        inner = self._link.run(lambda b: b.jobs.claim_many(queue, worker_id, lease_ttl, max_jobs))
        return [ClaimedJob(self._link.portal, job) for job in inner]

    def ack_many(self, jobs: Iterable[ClaimedJob]) -> None:
        """As :meth:`klieo_shm.JobQueue.ack_many`, for jobs claimed through
        this bus (``InvalidArgument``, nothing acked, for one of another)."""
        inner = _unwrap(jobs, ClaimedJob, self._link.portal, "jobs")
        self._link.run(lambda b: b.jobs.ack_many(inner))

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        return self._link.run(lambda b: b.jobs.dead_letters(queue))

    def requeue(self, queue: str, job_id: JobId) -> None:
        self._link.run(lambda b: b.jobs.requeue(queue, job_id))

    def discard(self, queue: str, job_id: JobId) -> None:
        self._link.run(lambda b: b.jobs.discard(queue, job_id))

    def stats(self, queue: str) -> QueueStats:
        return self._link.run(lambda b: b.jobs.stats(queue))


class Bus:
    """A blocking connection; see :class:`klieo_shm.Bus`. A context manager."""

    __slots__ = ("_closed", "_link", "jobs", "kv", "pubsub", "requests")

    def __init__(self, link: _Link) -> None:
        self._link = link
        self._closed = False
        self.pubsub = Pubsub(link)
        self.requests = RequestReply(link)
        self.kv = KvStore(link)
        self.jobs = JobQueue(link)

    @property
    def url(self) -> str:
        return self._link.url

    def __repr__(self) -> str:
        return f"sync.Bus({self.url!r})"

    def __iter__(self) -> Iterator[Pubsub | RequestReply | KvStore | JobQueue]:
        return iter((self.pubsub, self.requests, self.kv, self.jobs))

    def close(self) -> None:
        """Close the connection and stop its loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._link.close()

    def __enter__(self) -> Bus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(url: str | None = None) -> Bus:
    """Connect to the bus at ``url`` (see :func:`klieo_shm.connect`), blocking;
    ``?spin_us=N`` in the URL: see the module docstring."""
    return Bus(_Link(_bus.resolve_url(url)))
