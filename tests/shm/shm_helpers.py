"""Helpers for the shm tests: private socket paths, in-process and
subprocess brokers, and a raw protocol client for hostile input."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import klieo_shm
from klieo_shm.daemon import BrokerConfig, BrokerServer, DaemonProcess, leftover_segments
from klieo_shm.daemon._config import default_state_dir
from klieo_shm.protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    Event,
    Hello,
    Welcome,
)

SMALL: dict[str, Any] = {
    "max_payload": 64 * 1024,
    "arena_size": 1 << 20,
    "store_size": 8 << 20,
}
"""Limits small enough that tests can fill them."""
SMALL_ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
"""``SMALL`` as klieo-shmd options."""


@contextlib.contextmanager
def private_socket() -> Iterator[str]:
    """A socket path in a fresh private directory (short: AF_UNIX paths are
    limited to 107 bytes, pytest's tmp_path can be longer). On exit, checks
    that no segment of a broker on this socket is left in /dev/shm."""
    directory = tempfile.mkdtemp(prefix="klieo-t-", dir="/tmp")
    path = os.path.join(directory, "k.sock")
    try:
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(default_state_dir(path), ignore_errors=True)  # may be in /dev/shm
    left = leftover_segments(path)
    assert not left, f"segments left behind: {left}"


@contextlib.asynccontextmanager
async def bus_on(sock: str) -> AsyncIterator[klieo_shm.Bus]:
    """A bus on the broker at ``sock``, closed on exit."""
    bus = await klieo_shm.connect(f"shm://{sock}")
    try:
        yield bus
    finally:
        await bus.close()


@contextlib.contextmanager
def restartable_daemon(sock: str, *args: str) -> Iterator[DaemonProcess]:
    """A klieo-shmd with ``args`` that the test may kill and start again;
    stopped on exit (a SIGKILLed last daemon is fine: the stop removes its
    segments)."""
    d = DaemonProcess(sock, *args)
    d.start()
    try:
        yield d
    finally:
        d.stop()


@contextlib.asynccontextmanager
async def running_broker(path: str, **options: Any) -> AsyncIterator[BrokerServer]:
    """A broker served by the test's own event loop."""
    server = BrokerServer(BrokerConfig(socket_path=path, **options))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


class RawClient:
    """A blocking protocol client that can send anything at all."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.conn = Connection("client")
        self.welcome: Welcome | None = None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def hello(self, version: int = PROTOCOL_VERSION) -> list[Event]:
        data = self.conn.send(Hello(version, os.getpid(), "raw"))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(data)  # a refused peer may be cut off before it speaks
        events = self.read(1)
        if events and isinstance(events[0], Welcome):
            self.welcome = events[0]
        return events

    def send(self, event: Event) -> None:
        self.sock.sendall(self.conn.send(event))

    def read(self, n: int) -> list[Event]:
        """Read until ``n`` events arrived or the broker closed the socket."""
        out: list[Event] = []
        while len(out) < n:
            try:
                ev = self.conn.next_event()
            except Exception:
                return out
            if ev is NEED_DATA:
                data = self.sock.recv(1 << 16)
                self.conn.receive_data(data)
                continue
            if ev is CLOSED:
                return out
            assert isinstance(ev, Event)
            out.append(ev)
        return out

    def read_until_eof(self) -> tuple[list[Event], bytes]:
        """Every event (parsed as a client would) and raw bytes until EOF."""
        raw = b""
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                break
            raw += data
        self.conn.receive_data(raw)
        events: list[Event] = []
        with contextlib.suppress(Exception):
            events = self.conn.events()
        return events, raw
