"""The asyncio client: a thin driver over the sans-IO protocol.

One ``ShmClient`` is one connection to ``klieo-shmd``. It owns the socket
(through an ``asyncio.Protocol``), the client's tx arena (mapped read-write)
and a read-only view of the broker's store.

Writes are coalesced: every event queued during one loop iteration goes out
in one ``transport.write``. Publishes are pipelined: concurrent ``publish``
calls share one publish batch (one frame, one contiguous arena region) and
each returns when the broker's ``PubAck`` for its batch arrives. Acks are
fire-and-forget (as JetStream's ``msg.ack()``), merged into ranges, and sent
before any later frame, so ``close()`` after ``ack()`` never loses the ack.

Fork safety: the client remembers its pid; in a forked child the first use
forgets the parent's connection and mappings (without touching them) and
connects afresh. A client is used from one event loop.

Reconnection: when the connection is lost (the broker died, or closed this
connection) -- not by :meth:`ShmClient.close`, not in a forked child -- the
client reconnects by itself in a background task, retrying with exponential
backoff (20 ms doubling to 1 s) for up to ``reconnect_timeout`` seconds
(default 30; the ``reconnect_timeout`` query parameter of the ``shm://`` URL,
else the ``KLIEO_RECONNECT_TIMEOUT`` environment variable). Then:

- Operations in flight at the loss fail at once with
  :class:`ConnectionInterrupted` (a ``Closed``): the operation may or may not
  have taken effect. Publishes awaiting their ``PubAck`` fail the same way
  (retrying may duplicate, as at-least-once allows).
- Operations started while reconnecting wait for the new connection.
- On the new connection the owner's ``on_restore`` hook runs first (streams
  re-subscribe, services re-register, watches re-watch), then the waiting
  operations go on. ``gen`` counts connections: handles bound to an older
  one (delivery ids are per connection) know they are stale with one int
  compare, and the connected path pays nothing else.
- After the window, the client gives up: ``on_lost`` ends every stream, and
  every pending and later operation raises ``Closed`` naming the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import mmap
import operator
import os
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, ClassVar, Final, TypeVar

from .._errors import BusError, Closed, Full, InvalidArgument, ProtocolError
from .._inherit import hold, let_go
from .._spin import SpinningEventLoop
from ..layout import HEADER_SIZE, READ_MARK_WORD, SLOT, open_arena, open_store, write_slot
from ..protocol import (
    ACK_KIND_ACK,
    CLOSED,
    MAX_BATCH,
    NEED_DATA,
    PROTOCOL_VERSION,
    PUBACK_KEPT,
    PUBACK_OK,
    AckBatch,
    ArenaGone,
    Call,
    Connection,
    DeliverBatch,
    Error,
    Event,
    Hello,
    Incoming,
    KvWrite,
    KvWritten,
    PubAck,
    PublishBatch,
    Release,
    Reply,
    Request,
    Result,
    StreamEnd,
    Welcome,
)
from ..protocol._wire_errors import error_from_wire
from ._arenas import MAP_ERRORS, SPILL_AFTER, PeerArenas, TxZones
from ._maps import Mapping

__all__ = [
    "ENV_RECONNECT_TIMEOUT",
    "RECONNECT_TIMEOUT",
    "ConnectionInterrupted",
    "ShmClient",
    "reconnect_timeout_from_env",
]

log: Final = logging.getLogger("klieo_shm.shm")
T = TypeVar("T")

_BATCH_BYTES: Final = 4 << 20
_JOIN_BELOW: Final = 4096
"""A publish batch whose messages average at most this many bytes is joined
and copied into the arena at once (two copies in C beat a Python step per
message); larger ones are copied one by one."""
_READ_BUFFER: Final = 256 << 10
_EAGER_MSGS: Final = 256
_EAGER_ACKS: Final = 64
"""Queued publishes, or acked deliveries, written at once rather than at
the end of the loop turn: a caller that queues thousands in one turn (a
publish window whose futures are all done, acks of several ready batches)
keeps the broker working on the first ones while it queues the rest, instead
of the two taking turns. Acks go at an eighth of the broker's default member
window (512), so that it has room to deliver more while these are in flight."""

_NO_WORDS: Final = memoryview(bytes(HEADER_SIZE)).cast("Q")
"""The store header's words while no store is mapped (all zero)."""

RECONNECT_TIMEOUT: Final = 30.0
"""Seconds a client keeps trying to reconnect after losing the broker."""
ENV_RECONNECT_TIMEOUT: Final = "KLIEO_RECONNECT_TIMEOUT"
_BACKOFF_FIRST: Final = 0.02
_BACKOFF_MAX: Final = 1.0


def reconnect_timeout_from_env() -> float:
    """``$KLIEO_RECONNECT_TIMEOUT`` as seconds, else :data:`RECONNECT_TIMEOUT`."""
    raw = os.environ.get(ENV_RECONNECT_TIMEOUT)
    if not raw:
        return RECONNECT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(ENV_RECONNECT_TIMEOUT, raw, "must be seconds (a number)") from None
    if not value >= 0.0 or value == float("inf"):
        raise InvalidArgument(ENV_RECONNECT_TIMEOUT, raw, "must be finite and >= 0")
    return value


class ConnectionInterrupted(Closed):
    """The connection to klieo-shmd broke while this operation was in flight.

    The operation may or may not have taken effect. The client is
    reconnecting: retrying is possible (``transient`` is True), and a retry
    waits for the new connection. Once the client gives up, operations raise
    a plain :class:`~klieo_shm.Closed` instead.
    """

    transient: ClassVar[bool] = True


# Fork detection without a getpid() syscall per call: bumped in every child.
_forks = [0]


def _after_fork_in_child() -> None:
    _forks[0] += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _Proto(asyncio.BufferedProtocol):
    """Reads into one buffer allocated once. asyncio's plain ``Protocol``
    allocates a fresh 256 KiB ``bytes`` for every read; on an asyncio echo
    ping-pong that alone cost ~25 of ~45 µs per round trip."""

    def __init__(self, client: ShmClient) -> None:
        self.client = client
        self._view = memoryview(bytearray(_READ_BUFFER))
        self._fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a forked child lets go of its copy: the broker sees this process
        # go when it goes, children or not
        self._fd = transport.get_extra_info("socket").fileno()
        hold(self._fd)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.client._on_data(self, self._view[:nbytes])

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        let_go(self._fd)  # asyncio closes the socket after this returns
        self.client._on_lost(self, exc)


class ShmClient:
    """One connection to the broker at ``socket_path``, reconnecting by itself
    (see the module docstring) for up to ``reconnect_timeout`` seconds
    (``None``: ``$KLIEO_RECONNECT_TIMEOUT``, else 30).

    Hooks the owner sets: ``on_deliver``, ``on_incoming``, ``on_stream_end``
    (events); ``on_interrupted`` (the connection broke, reconnecting);
    ``on_restore`` (awaited on a new connection before anything else uses
    it; it may only use :meth:`call_direct` and :meth:`send`); ``on_lost``
    (the client gave up).
    """

    def __init__(
        self, socket_path: str, name: str = "", reconnect_timeout: float | None = None
    ) -> None:
        self.socket_path = socket_path
        self.name = name or f"pid{os.getpid()}"
        if reconnect_timeout is None:
            reconnect_timeout = reconnect_timeout_from_env()
        self.reconnect_timeout = reconnect_timeout
        self._pid = -1
        self._fork_gen = -1
        self._spin_loop: SpinningEventLoop | None = None  # spins while we await
        self._unspin: Callable[[], None] = lambda: None
        self._waits = 0  # calls in flight that wait at the broker on purpose
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self.gen = 0
        """Connection generation: bumped for every new connection (attempt)."""
        self.on_deliver: Callable[[DeliverBatch], None] = lambda ev: None
        self.on_incoming: Callable[[Incoming], None] = lambda ev: None
        self.on_stream_end: Callable[[StreamEnd], None] = lambda ev: None
        self.on_interrupted: Callable[[], None] = lambda: None
        self.on_restore: Callable[[], Awaitable[None]] | None = None
        self.on_lost: Callable[[BusError], None] = lambda exc: None
        self.also_awaiting: Callable[[], bool] = lambda: False
        """Whether the owner awaits an answer that is not the broker's (a
        direct request): the client's loop spins then too."""
        self._forget_reconnect()
        self._reset()

    def _forget_reconnect(self) -> None:
        self._reconnect_task: asyncio.Task[None] | None = None
        self._reconnected: asyncio.Future[Closed | None] | None = None
        self._gone: Closed | None = None  # set once the client gave up

    def _reset(self) -> None:
        self.gen += 1
        self._ready = False  # handshake done (and, after a loss, state restored)
        self._proto: _Proto | None = None
        self._transport: asyncio.Transport | None = None
        self._conn = Connection("client")
        self._welcome: Welcome | None = None
        self._arena_map: Mapping | None = None
        self._store_map: Mapping | None = None
        self.arena = memoryview(b"")
        self.store = memoryview(b"")
        # the store's whole mapping (header first), to copy payloads out of
        self.store_mm: mmap.mmap | bytes = b""
        self.store_words = _NO_WORDS  # the store's header as 8-byte words
        self.arena_words = _NO_WORDS  # the arena's, likewise
        self.zones = TxZones(1 << 20, 0)
        self.peers: PeerArenas | None = None  # arenas kept batches are read from
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._idle = True  # nothing written since the last read or flush
        self._acks: list[tuple[int, int, int, int]] = []
        self._acked = 0  # delivery ids in _acks
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count(1)
        self._batch: list[tuple[bytes, bytes, bytes, asyncio.Future[None]]] = []
        self._batch_nos = itertools.count(1)
        # (batch_no, futures, region offset, in the keep zone)
        self._inflight: deque[tuple[int, list[asyncio.Future[None]], int, bool]] = deque()
        self._arena_waiters: list[asyncio.Future[None]] = []
        self._spill_timer: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Future[Welcome] | None = None
        self._lost: BusError | None = None
        # The loop of this connection: on Python 3.11 every
        # ``asyncio.get_running_loop()`` costs a getpid() syscall.
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- connection ----------------------------------------------------------
    @property
    def max_payload(self) -> int:
        return self._welcome.max_payload if self._welcome else 0

    @property
    def max_frame(self) -> int:
        """The connection's frame body limit (the broker's, once connected)."""
        return self._conn.max_frame

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def connected(self) -> bool:
        """Whether operations can go out now (not while reconnecting)."""
        return self._ready and self._fork_gen == _forks[0]

    @property
    def reconnecting(self) -> bool:
        """Whether the connection was lost and a reconnection is under way."""
        return self._reconnected is not None and self._fork_gen == _forks[0]

    async def ensure(self) -> None:
        """Connect if not connected (first use, after fork); wait while
        reconnecting. Raises ``Closed`` naming the socket when it cannot, or
        once the client gave up reconnecting."""
        while True:
            if self._closed:
                raise Closed(self.socket_path, "this bus was closed")
            if self.connected:
                return
            if self._fork_gen != _forks[0]:  # fresh, or a forked child: forget, never touch
                self._fork_gen = _forks[0]
                self._pid = os.getpid()
                self._lock = None
                self._forget_reconnect()
                self._reset()
            if self._gone is not None:
                raise Closed(self.socket_path, self._gone.reason)
            waiting = self._reconnected
            if waiting is not None:
                failed = await asyncio.shield(waiting)
                if failed is not None:
                    raise Closed(self.socket_path, failed.reason)
                continue  # connected again (or lost again meanwhile: look again)
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if not self.connected and self._reconnected is None and not self._closed:
                    await self._connect()
                    self._ready = True

    async def _connect(self) -> None:
        """One attempt: connect, handshake, map. Starts from a fresh state
        (a new generation); on failure leaves nothing open."""
        self._teardown()
        self._reset()
        self._loop = loop = asyncio.get_running_loop()
        try:
            transport, proto = await loop.create_unix_connection(
                lambda: _Proto(self), self.socket_path
            )
        except OSError as exc:
            raise Closed(
                self.socket_path, f"cannot reach klieo-shmd: {exc.strerror or exc}"
            ) from exc
        assert isinstance(transport, asyncio.Transport)
        self._transport, self._proto = transport, proto
        self._handshake = loop.create_future()
        self._write(self._conn.send(Hello(PROTOCOL_VERSION, os.getpid(), self.name)))
        try:
            welcome = await asyncio.wait_for(asyncio.shield(self._handshake), 10.0)
        except TimeoutError:
            self._teardown()
            raise Closed(self.socket_path, "klieo-shmd did not answer the handshake") from None
        except BusError:
            self._teardown()
            raise
        try:
            self._arena_map = Mapping(welcome.arena_name, welcome.arena_size, writable=True)
            self._store_map = Mapping(welcome.store_name, welcome.store_size, writable=False)
            self.arena = open_arena(self._arena_map.view, welcome.client_id)
            self.store = open_store(self._store_map.view)
            self.store_mm = self._store_map.mm
            self.store_words = self._store_map.view[:HEADER_SIZE].cast("Q")
            self.arena_words = self._arena_map.view[:HEADER_SIZE].cast("Q")
            self.zones = TxZones(len(self.arena), welcome.keep_min)
        except MAP_ERRORS as exc:  # LayoutError among them: another format version
            self._teardown()
            raise Closed(self.socket_path, f"cannot map the broker's segments: {exc}") from exc
        self.peers = PeerArenas(
            welcome.arena_prefix, welcome.arena_size, welcome.client_id, self.arena
        )
        self._welcome = welcome
        self._spin_on(loop)

    def _spin_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Spin on ``loop`` while an answer is awaited, if it is a spinning
        loop (and on no other loop any more)."""
        if loop is self._spin_loop:
            return
        self._unspin()
        self._unspin, self._spin_loop = lambda: None, None
        if isinstance(loop, SpinningEventLoop):
            self._spin_loop = loop
            self._unspin = loop.spin_while(self._awaiting)

    def _awaiting(self) -> bool:
        """Whether an answer from the broker is awaited soon: a publish, or
        a call other than those that wait at the broker on purpose."""
        return len(self._calls) > self._waits or bool(self._inflight) or self.also_awaiting()

    def _wait_done(self, fut: asyncio.Future[Any]) -> None:
        self._waits -= 1

    def _teardown(self) -> None:
        self._stop_spill_timer()
        if self._transport is not None:
            self._transport.abort()
        self._transport = None
        self._proto = None  # what the old transport still reports is ignored
        if self.peers is not None:
            self.peers.close()
            self.peers = None
        self.arena = self.store = memoryview(b"")
        self.store_mm = b""
        self.store_words = self.arena_words = _NO_WORDS
        for m in (self._arena_map, self._store_map):
            if m is not None:
                m.close()
        self._arena_map = self._store_map = None

    async def close(self) -> None:
        """Flush what is queued and close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._fork_gen != _forks[0]:
            return  # the parent's connection: not ours to close
        self._unspin()
        self._unspin, self._spin_loop = lambda: None, None
        if self._transport is not None and self._lost is None:
            self._flush()
            self._transport.close()
            self._transport = None
        closed = Closed(self.socket_path, "this bus was closed")
        self._ready = False
        self._fail_all(closed)
        task, waiting = self._reconnect_task, self._reconnected
        self._reconnect_task = self._reconnected = None
        if waiting is not None and not waiting.done():
            waiting.set_result(closed)
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._teardown()

    # --- reconnecting ---------------------------------------------------------
    def _start_reconnect(self) -> None:
        loop = asyncio.get_running_loop()
        self._reconnected = loop.create_future()
        self._reconnect_task = loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Connect again with backoff; restore the owner's state; then let
        the waiting operations go on. Gives up after ``reconnect_timeout``."""
        loop = asyncio.get_running_loop()
        self._teardown()  # the dead connection's mappings, at once
        deadline = loop.time() + self.reconnect_timeout
        delay = _BACKOFF_FIRST
        why = "klieo-shmd went away"
        while not self._closed:
            try:
                await self._connect()
                if self.on_restore is not None:
                    await self.on_restore()
                if self._lost is not None:  # lost again while restoring
                    raise self._lost
            except Exception as exc:  # a bug in a restore hook must not hang the waiters
                if not isinstance(exc, BusError):
                    log.warning("reconnecting to %s failed", self.socket_path, exc_info=True)
                why = f"klieo-shmd went away and did not come back ({exc})"
                left = deadline - loop.time()
                if left <= 0:
                    break
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            self._ready = True
            waiting = self._reconnected
            self._reconnect_task = self._reconnected = None
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
            return
        if self._closed:
            return
        gone = self._gone = Closed(
            self.socket_path, f"{why}; gave up after {self.reconnect_timeout:g} s"
        )
        waiting = self._reconnected
        self._reconnect_task = self._reconnected = None
        self._teardown()
        if waiting is not None and not waiting.done():
            waiting.set_result(gone)
        self.on_lost(gone)

    # --- receiving -----------------------------------------------------------
    def _on_data(self, proto: _Proto, data: memoryview) -> None:
        if proto is not self._proto:
            return
        conn = self._conn
        conn.receive_data(data)
        self._idle = True
        try:
            while True:
                ev = conn.next_event()
                if ev is NEED_DATA or ev is CLOSED:
                    return
                if isinstance(ev, Result):
                    self._on_result(ev)
                elif isinstance(ev, KvWritten):
                    self._answer(ev.call_id, ev.revision)
                elif isinstance(ev, Reply):
                    self._answer(ev.call_id, ev.payload)
                elif isinstance(ev, DeliverBatch):
                    self.on_deliver(ev)  # copies out every payload the frame names
                    words = self.arena_words  # the read mark, as layout.mark_read stores it
                    if words is not _NO_WORDS:
                        words[READ_MARK_WORD] = ev.first_id + ev.count - 1
                elif isinstance(ev, PubAck):
                    self._on_puback(ev)
                elif isinstance(ev, Incoming):
                    self.on_incoming(ev)
                elif isinstance(ev, StreamEnd):
                    self.on_stream_end(ev)
                elif isinstance(ev, Release):
                    self._on_release(ev)
                elif isinstance(ev, ArenaGone):
                    if self.peers is not None:
                        self.peers.drop(ev.client_id)
                elif isinstance(ev, Welcome):
                    if self._handshake is not None and not self._handshake.done():
                        self._handshake.set_result(ev)
                elif isinstance(ev, Error):
                    self._lose(ProtocolError(f"klieo-shmd closed the connection: {ev.message}"))
                    return
        except ProtocolError as exc:
            self._lose(exc)
        finally:
            if self._out:  # replies queued by handlers go out with no extra loop turn
                self._flush()

    def _on_lost(self, proto: _Proto, exc: Exception | None) -> None:
        if proto is self._proto and not self._closed:
            self._lose(Closed(self.socket_path, "klieo-shmd went away"))

    def _lose(self, exc: BusError) -> None:
        if self._lost is not None:
            return
        was_ready = self._ready
        self._lost = exc
        self._ready = False
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()
        reconnect = was_ready and not self._closed and self._fork_gen == _forks[0]
        if reconnect and self._reconnect_task is None:
            self._start_reconnect()  # before failing anything: retries wait for it
        cause = exc.reason if isinstance(exc, Closed) else str(exc)
        self._fail_all(
            ConnectionInterrupted(
                self.socket_path,
                f"{cause} with this operation in flight; it may or may not have taken effect",
            )
        )
        if reconnect:
            self.on_interrupted()

    def _fail_all(self, exc: BusError) -> None:
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(exc)
        batch, self._batch = self._batch, []
        for *_, fut in batch:
            if not fut.done():
                fut.set_exception(exc)
        while self._inflight:
            for fut in self._inflight.popleft()[1]:
                if not fut.done():
                    fut.set_exception(exc)
        for w in self._arena_waiters:
            if not w.done():
                w.set_result(None)

    def _answer(self, call_id: int, value: Any) -> None:
        fut = self._calls.pop(call_id, None)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _on_result(self, ev: Result) -> None:
        fut = self._calls.pop(ev.call_id, None)
        if fut is None or fut.done():
            return
        if ev.error_type:
            fut.set_exception(error_from_wire(ev.error_type, ev.error_args))
        else:
            fut.set_result(ev.value)

    def _on_puback(self, ev: PubAck) -> None:
        if not self._inflight or self._inflight[0][0] != ev.batch_no:
            self._lose(ProtocolError(f"PubAck for batch {ev.batch_no} out of order"))
            return
        _, futs, off, kept_zone = self._inflight.popleft()
        kept = ev.status == PUBACK_KEPT
        if kept and not kept_zone:
            self._lose(ProtocolError(f"batch {ev.batch_no} kept, but it was not offered"))
            return
        self.zones.answered(ev.batch_no, off, kept_zone, kept)
        if ev.status == PUBACK_OK or kept:
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)
        else:
            err = Full(
                "payload storage of klieo-shmd", self._welcome.store_size if self._welcome else None
            )
            for fut in futs:
                if not fut.done():
                    fut.set_exception(err)
        self._wake_arena_waiters(keep_room=kept_zone and not kept)

    def _wake_arena_waiters(self, keep_room: bool = False) -> None:
        """Room was freed (``keep_room``: in the keep zone): retry what waits
        for it (a new wait for the keep zone starts ``SPILL_AFTER`` afresh)."""
        if keep_room:
            self._stop_spill_timer()
        waiters, self._arena_waiters = self._arena_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _on_release(self, ev: Release) -> None:
        for batch_no in ev.batch_nos:
            if not self.zones.released(batch_no):
                self._lose(ProtocolError(f"Release of batch {batch_no}, which is not kept"))
                return
        self._wake_arena_waiters(keep_room=True)

    # --- sending -------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._lost is not None:
            raise ConnectionInterrupted(self.socket_path, f"connection lost: {self._lost}")

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop().call_soon(self._flush)

    def send(self, event: Event) -> None:
        """Queue ``event`` after everything queued before it (acks, publishes).

        When the connection is idle (nothing written since the broker last
        answered or since the last flush) the event is written at once, with
        no added latency and no extra loop turn; events sent after it, before
        the broker answers, are coalesced into one write at the end of their
        loop turn.
        """
        if self._lost is not None:
            self._check_usable()
        if self._acks:
            self._pack_acks()
        if self._batch:
            self._pack_batches()
        self._out.append(self._conn.send(event))
        if not self._flush_scheduled:
            if self._idle:
                self._idle = False
                self._write_out()
            else:
                self._flush_scheduled = True
                self.loop().call_soon(self._flush)

    @property
    def queued(self) -> bool:
        """Whether encoded frames wait to be written."""
        return bool(self._out)

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, as ``asyncio.get_running_loop()``: the
        connection's own once connected, without that call's syscall."""
        return self._loop or asyncio.get_running_loop()

    def write_now(self) -> None:
        """Write what is queued (events, acks, publishes) now, not at the end
        of this loop turn; nothing while not connected."""
        if self.connected:
            self._flush()

    def current(self, gen: int) -> bool:
        """Whether connection generation ``gen`` is the live connection (an
        answer to something that came on ``gen`` can still be sent)."""
        return self.gen == gen and self._lost is None and self._transport is not None

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._idle = True
        if self._lost is None and self._transport is not None:
            self._pack_acks()
            if self._batch:
                self._pack_batches()
        self._write_out()

    def _write_out(self) -> None:
        out = self._out
        if out and self._lost is None and self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def start(
        self, make: Callable[[int], Event], *, waits: bool = False
    ) -> tuple[int, asyncio.Future[Any]]:
        """Send ``make(call_id)`` now (the client must be connected): a
        ``Call``, ``KvWrite`` or ``Request``, whose answer (a ``Result``,
        ``KvWritten`` or ``Reply``) resolves the returned future. ``waits``:
        the broker may hold the answer on purpose (a claim on an empty
        queue, a watch's next changes), so a spinning loop does not spin for
        it."""
        call_id = next(self._call_ids)
        fut: asyncio.Future[Any] = self.loop().create_future()
        if waits:
            self._waits += 1
            fut.add_done_callback(self._wait_done)
        self._calls[call_id] = fut
        try:
            self.send(make(call_id))
        except BaseException:
            self._calls.pop(call_id, None)
            if waits:
                fut.cancel()  # runs _wait_done
            raise
        return call_id, fut

    def start_call(
        self, method: str, args: dict[str, Any], *, waits: bool = False
    ) -> tuple[int, asyncio.Future[Any]]:
        """:meth:`start` of a ``Call`` of ``method`` with ``args``."""
        return self.start(lambda call_id: Call(call_id, method, args), waits=waits)

    async def exchange(
        self, make: Callable[[int], Event], timeout: float | None = None, *, waits: bool = False
    ) -> Any:
        """Connect if need be, :meth:`start`, and return the answer's value
        (or raise the error its ``Result`` carries); ``TimeoutError`` when
        none comes within ``timeout`` seconds."""
        if not self.connected:
            await self.ensure()
        call_id, fut = self.start(make, waits=waits)
        if timeout is None:
            return await fut
        timer = self.loop().call_later(timeout, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            self._calls.pop(call_id, None)

    def call(
        self,
        method: str,
        args: dict[str, Any],
        timeout: float | None = None,
        *,
        waits: bool = False,
    ) -> Coroutine[Any, Any, Any]:
        """:meth:`exchange` of a ``Call``: the ``Result`` value."""
        return self.exchange(lambda call_id: Call(call_id, method, args), timeout, waits=waits)

    def kv_write(
        self, op: int, bucket: str, key: str, value: bytes, expected: int | None = None
    ) -> Coroutine[Any, Any, int]:
        """:meth:`exchange` of a ``KvWrite`` (``op``: a ``KV_OP_*``): the
        revision it took."""
        return self.exchange(lambda call_id: KvWrite(call_id, op, bucket, key, value, expected))

    def request(self, subject: str, payload: bytes, timeout: float) -> Coroutine[Any, Any, bytes]:
        """:meth:`exchange` of a ``Request``: the reply's payload."""
        return self.exchange(lambda call_id: Request(call_id, subject, payload, timeout), timeout)

    async def call_direct(self, method: str, args: dict[str, Any]) -> Any:
        """``call`` on the current connection without waiting for it to be
        ready: for ``on_restore``, which runs before waiting operations go on."""
        return await self.start_call(method, args)[1]

    async def register_again(
        self,
        items: Sequence[T],
        register: Callable[[T], tuple[str, dict[str, Any]]],
        unregister: Callable[[T], tuple[str, dict[str, Any]]],
        still_open: Callable[[T], bool],
    ) -> list[tuple[T, Any]]:
        """For ``on_restore``: send every item's ``register`` call on the new
        connection at once; an item closed meanwhile that the broker took is
        unregistered again. Returns ``(item, answer)`` for the items still
        open, the answer being the broker's error where it refused one.
        Raises ``Closed`` if the new connection broke too (the client then
        retries)."""
        answers = await asyncio.gather(
            *(self.call_direct(*register(item)) for item in items), return_exceptions=True
        )
        kept: list[tuple[T, Any]] = []
        for item, answer in zip(items, answers, strict=True):
            if isinstance(answer, Closed):
                raise answer
            if still_open(item):
                kept.append((item, answer))
            elif not isinstance(answer, BaseException):
                with contextlib.suppress(BusError):
                    await self.call_direct(*unregister(item))
        return kept

    # --- acks ----------------------------------------------------------------
    def ack(self, delivery_id: int, kind: int = ACK_KIND_ACK, delay_ms: int = 0) -> None:
        """Queue one ack/nak/term/progress; merged into ranges at flush."""
        self.ack_all((delivery_id,), kind, delay_ms)

    def ack_all(
        self, delivery_ids: Sequence[int], kind: int = ACK_KIND_ACK, delay_ms: int = 0
    ) -> None:
        """Queue the same ack/nak/term/progress of each delivery, merged into
        ranges at flush. Nothing once the connection is lost: the broker has
        handed those deliveries to others."""
        if self._lost is not None or self._transport is None or not delivery_ids:
            return
        acks = self._acks
        count, start = len(delivery_ids), delivery_ids[0]
        if delivery_ids[-1] - start == count - 1 and all(
            map(operator.eq, delivery_ids, range(start, start + count))
        ):  # one run of ids (the usual batch): one range, no step per id
            runs: Iterable[tuple[int, int]] = ((start, count),)
        else:
            runs = zip(delivery_ids, itertools.repeat(1))
        for did, m in runs:
            if acks:
                first, n, k, d = acks[-1]
                if k == kind and d == delay_ms and first + n == did:
                    acks[-1] = (first, n + m, k, d)
                    continue
            acks.append((did, m, kind, delay_ms))
        self._acked += len(delivery_ids)
        if self._acked >= _EAGER_ACKS:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop().call_soon(self._flush)

    def _pack_acks(self) -> None:
        self._acked = 0
        acks = self._acks
        while acks:
            chunk, self._acks = acks[:MAX_BATCH], acks[MAX_BATCH:]
            acks = self._acks
            self._out.append(self._conn.send(AckBatch(list(chunk))))

    # --- publish -------------------------------------------------------------
    def publish_nowait(
        self, subject: bytes, headers: bytes, payload: bytes
    ) -> asyncio.Future[None]:
        """Queue one message; the future resolves at its batch's ``PubAck``
        (or fails with ``Full``/``Closed``). The caller has called
        :meth:`ensure` and checked the payload limit."""
        self._check_usable()
        loop = self._loop or asyncio.get_running_loop()  # self.loop() inlined: per message
        fut: asyncio.Future[None] = loop.create_future()
        batch = self._batch
        batch.append((subject, headers, payload, fut))
        if len(batch) >= _EAGER_MSGS and not self._arena_waiters:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _pack_batches(self) -> None:
        """Move queued messages into the arena as batches; what does not fit
        waits for PubAcks to free arena room (bounded by PUBLISH_TIMEOUT)."""
        # a batch takes at most a quarter of the ring, so several are in flight
        limit = min(_BATCH_BYTES, self.zones.ring.capacity // 4)
        frame_limit = self._conn.max_frame - 4096  # descriptors + subjects
        while self._batch:
            take, size, frame = 0, SLOT.size, 0
            for subj, hdr, pay, _ in self._batch:
                n = len(hdr) + len(pay)
                f = len(subj) + 16
                if take and (take == MAX_BATCH or size + n > limit or frame + f > frame_limit):
                    break
                take += 1
                size += n
                frame += f
            got = self.zones.alloc(size)
            if got is None:
                if self.zones.waits_for_keep(size):
                    self._wait_for_keep()
                else:
                    self._wait_for_arena()
                return
            off, kept = got
            batch, self._batch = self._batch[:take], self._batch[take:]
            batch_no = next(self._batch_nos)
            arena = self.arena
            write_slot(arena, off, self._welcome.client_id if self._welcome else 0, size, batch_no)
            # Bulk operations, not a Python step per message: lengths by map,
            # offsets by accumulate, small payloads joined and copied at once.
            subjs, hdrs, pays, futs = zip(*batch, strict=True)
            hls = list(map(len, hdrs))
            pls = list(map(len, pays))
            if any(hls):
                pairs = zip(hdrs, pays, strict=True)
                parts: Sequence[bytes] = list(itertools.chain.from_iterable(pairs))
                sizes: Sequence[int] = list(map(operator.add, hls, pls))
            else:
                parts, sizes = pays, pls
            body = off + SLOT.size
            if size <= take * _JOIN_BELOW:  # small messages: one copy of the whole
                arena[body : off + size] = b"".join(parts)
            else:  # large ones are not copied twice
                for part in parts:
                    arena[body : body + len(part)] = part
                    body += len(part)
            starts = itertools.accumulate(sizes, initial=SLOT.size)
            # accumulate yields one start too many: zip stops at the last message
            descs: list[tuple[int, ...]] = list(
                zip(starts, hls, pls, map(len, subjs), strict=False)
            )
            # SYNC POINT: arena bytes and slot tag written above, before the
            # frame naming them is sent; the broker reads them after receiving it.
            self._out.append(
                self._conn.send(
                    PublishBatch(batch_no, off, size, descs, b"".join(subjs), keep=kept)
                )
            )
            self._inflight.append((batch_no, list(futs), off, kept))

    def _wait_for_keep(self) -> None:
        """No room in the keep zone: retry when a Release (or PubAck) frees
        some, or after ``SPILL_AFTER`` seconds, then in the ring."""
        if self._spill_timer is None:
            self._spill_timer = self.loop().call_later(SPILL_AFTER, self._spill)
        self._park_batches()

    def _stop_spill_timer(self) -> None:
        if self._spill_timer is not None:
            self._spill_timer.cancel()
            self._spill_timer = None

    def _spill(self) -> None:
        self._spill_timer = None
        if self._lost is None and self._batch:
            self.zones.spill = True
            self._flush()

    def _wait_for_arena(self) -> None:
        """No room in the ring: retry when the next PubAck frees some. Bounded
        because every batch in flight gets its PubAck within the broker's
        publish timeout (or the connection is lost and everything fails)."""
        if not self._inflight:  # nothing will free room: cannot happen while limits hold
            err = Full("tx arena", len(self.arena))
            batch, self._batch = self._batch, []
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        self._park_batches()

    def _park_batches(self) -> None:
        """Flush the queued batches again once room was freed."""
        if self._arena_waiters:
            return  # already waiting for a PubAck to free room
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arena_waiters.append(waiter)

        def retry(_: object) -> None:
            if self._lost is None and self._batch:
                self._flush()

        waiter.add_done_callback(retry)
