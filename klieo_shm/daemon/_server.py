"""The daemon's asyncio driver: a thin layer of I/O over :class:`Broker`.

One event loop, one Unix stream server. Per connection: check the peer's
credentials (SO_PEERCRED), read bytes into the broker, write what it queued
in one ``transport.write`` per loop iteration, close on protocol errors.
A periodic tick drives ack_wait, nak delays and publish timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
from typing import Final

import psutil

from .._peercred import peer_credentials
from .._spin import SpinningEventLoop
from ._broker import Broker, Session
from ._config import BrokerConfig
from ._segments import remove_stale

__all__ = ["BrokerServer", "serve_forever"]

log = logging.getLogger("klieo.shmd")
TICK: Final = 0.02
READ_BUFFER: Final = 64 << 10
"""Bytes read per ``recv`` on one connection (a bigger frame takes several)."""


class _Conn(asyncio.BufferedProtocol):
    """One client connection. Reads go into one buffer allocated once per
    connection: asyncio's plain ``Protocol`` allocates a fresh 256 KiB
    ``bytes`` for every read, which costs more than handling a small call."""

    def __init__(self, server: BrokerServer) -> None:
        self.server = server
        self.broker = server.broker
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self._out: list[bytes] = []
        self._view = memoryview(bytearray(READ_BUFFER))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def _write(self, data: bytes) -> None:
        if not self._out:
            self.server.schedule_flush(self)
        self._out.append(data)

    def _flush(self) -> None:
        out = self._out
        if out:
            self.broker.flush_journal()  # never tell a client what is not journalled
        if out and self.transport is not None and not self.transport.is_closing():
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.transport.write(data)
        out.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        pid, uid, gid = peer_credentials(sock)
        try:
            start = psutil.Process(pid).create_time()
        except psutil.Error:
            start = 0.0
        self.session = s = self.broker.open_session(self._write, pid, uid, start)
        self.server.conns.add(self)
        if not self.server.allowed(uid, gid):
            log.warning("refusing pid %d: uid %d is not allowed", pid, uid)
            self.broker.refuse(s, f"uid {uid} may not use this broker")
            self._flush()
            transport.close()

    def buffer_updated(self, nbytes: int) -> None:
        s = self.session
        if s is None or s.closed:
            return
        data = self._view[:nbytes]
        server = self.server
        server.reading = True
        try:
            keep = self.broker.receive(s, data)
        except Exception:  # a broker bug must cost one connection, not the broker
            log.exception("%r: internal error; closing this connection", s)
            keep = False
        finally:
            server.reading = False
        # the journal first, also when nothing is answered (acks, notifications)
        self.broker.flush_journal()
        server.flush_all()  # one write per peer per read: coalesced, no extra turn
        if not keep and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        s = self.session
        if s is not None and not s.closed:
            self.broker.receive(s, b"")  # a frame cut short gets its Error
            self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        if self.session is not None:
            self.broker.close_session(self.session)
        self.transport = None


class BrokerServer:
    """The listening socket plus the broker; ``start`` then ``close``."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.broker: Broker
        self.conns: set[_Conn] = set()
        self._server: asyncio.base_events.Server | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._uid = os.getuid()
        self._gid: int | None = None
        self._closed = False
        self._dirty: list[_Conn] = []
        self.reading = False  # inside a read (buffer_updated), which flushes at its end

    def schedule_flush(self, conn: _Conn) -> None:
        """``conn`` has output: write it at the end of this read (no extra
        loop turn), or on the next loop turn when the write came from
        elsewhere (a timer, a disconnect)."""
        if not self._dirty and not self.reading:
            asyncio.get_running_loop().call_soon(self.flush_all)
        self._dirty.append(conn)

    def flush_all(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn._flush()

    def allowed(self, uid: int, gid: int) -> bool:
        if uid in (self._uid, 0):
            return True
        if self._gid is None:
            return False
        if gid == self._gid:
            return True
        import grp
        import pwd

        try:
            name = pwd.getpwuid(uid).pw_name
            return name in grp.getgrgid(self._gid).gr_mem
        except KeyError:
            return False

    async def start(self) -> None:
        """Create the socket directory, refuse if a live broker owns the
        socket, remove what a dead one left, then listen."""
        cfg = self.config
        path = cfg.socket_path
        loop = asyncio.get_running_loop()
        if cfg.spin_us and not isinstance(loop, SpinningEventLoop):
            log.warning(
                "spin_us %g is ignored: the broker runs on %s, not a "
                "klieo_shm.SpinningEventLoop(spin_us, always=True) (klieo-shmd makes one)",
                cfg.spin_us,
                type(loop).__name__,
            )
        self._prepare()
        try:
            self._server = await loop.create_unix_server(lambda: _Conn(self), path)
            self._protect()
        except BaseException:
            self.broker.shutdown()  # leave no segment behind
            self._closed = True
            raise
        self._tick = loop.call_later(TICK, self._on_tick)
        log.info("klieo-shmd %d serving %s (prefix %s)", os.getpid(), path, cfg.prefix)

    def _prepare(self) -> None:
        cfg = self.config
        path = cfg.socket_path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o750 if cfg.group else 0o700, exist_ok=True)
        if _socket_is_live(path):
            raise RuntimeError(f"another broker is already serving {path}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        # A dead broker's segments go once this broker has started: recovery
        # copies kept batches out of the arenas it left (this broker's own
        # names are unique to this start, so none can be taken).
        self.broker = Broker(cfg)
        removed = remove_stale(cfg.prefix, keep=self.broker.segment_base + "-")
        if removed:
            log.info("removed %d segments left by a dead broker: %s", len(removed), removed)
        self._gid = self.broker.gid

    def _protect(self) -> None:
        cfg = self.config
        path = cfg.socket_path
        directory = os.path.dirname(os.path.abspath(path))
        os.chmod(path, 0o660 if cfg.group else 0o600)
        if self._gid is not None:
            os.chown(path, -1, self._gid)
            os.chown(directory, -1, self._gid)
            os.chmod(directory, 0o750)
        elif stat.S_IMODE(os.stat(directory).st_mode) & 0o077:
            log.warning("socket directory %s is accessible to others", directory)

    def _on_tick(self) -> None:
        try:
            self.broker.tick()
        except Exception:
            log.exception("tick failed")
        self._tick = asyncio.get_running_loop().call_later(TICK, self._on_tick)

    async def close(self) -> None:
        """Stop listening, drop every client, unlink every segment and the
        socket. Idempotent."""
        if self._closed or not hasattr(self, "broker"):
            return
        self._closed = True
        if self._tick is not None:
            self._tick.cancel()
        self.broker.detach_journal()  # before any session ends: holders keep their claims
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()
        self.broker.shutdown()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.socket_path)
        log.info("klieo-shmd %d stopped", os.getpid())


def _socket_is_live(path: str) -> bool:
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


async def serve_forever(config: BrokerConfig, ready_fd: int | None = None) -> None:
    """Run a broker until SIGTERM or SIGINT, then shut down cleanly.

    ``ready_fd``: write one byte to this fd once the socket accepts clients.
    """
    # Handlers first: a signal that arrives while segments are being created
    # must still lead to a clean shutdown, never to the default (instant) death.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = BrokerServer(config)
    try:
        await server.start()
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        await stop.wait()
    finally:
        await server.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
