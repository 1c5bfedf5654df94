"""The klieo_shm pytest plugin (entry point ``pytest11``), loaded by pytest
whenever klieo_shm is installed.

Fixtures:

``klieo_broker``  (session) a ``klieo-shmd`` for this test session — one per
                  pytest-xdist worker, each on its own socket in a private
                  temporary directory, so its segment prefix is its own. It is
                  stopped at the end of the session; a segment left behind
                  fails the session loudly.
``klieo_url``     (session) the broker's ``shm://`` URL.
``klieo_bus``     a blocking bus (``klieo_shm.sync``) on that broker, closed
                  after the test.
``klieo_names``   a short token unique to the test, for subjects, durables,
                  buckets and queues (``f"{klieo_names}.orders"``), so tests
                  sharing a broker never see each other's messages.
``klieo_spawn``   starts a function in a new process (``spawn``) with
                  ``KLIEO_BUS_URL`` set to the broker; after the test, a
                  process still running is killed and the test fails.

Async tests connect with ``await klieo_shm.connect(klieo_url)``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

import psutil
import pytest

from . import sync
from ._bus import ENV_URL

__all__ = ["Broker", "Spawner"]


@dataclass(frozen=True, slots=True)
class Broker:
    """A running test broker: its socket path, URL and process id."""

    socket_path: str
    url: str
    pid: int


@pytest.fixture(scope="session")
def klieo_broker() -> Iterator[Broker]:
    from .daemon import spawn_daemon

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with tempfile.TemporaryDirectory(prefix=f"klieo-pytest-{worker}-") as tmp:
        sock = os.path.join(tmp, "klieo.sock")
        with spawn_daemon(sock) as proc:
            yield Broker(sock, f"shm://{sock}", proc.pid)


@pytest.fixture(scope="session")
def klieo_url(klieo_broker: Broker) -> str:
    return klieo_broker.url


@pytest.fixture
def klieo_bus(klieo_url: str) -> Iterator[sync.Bus]:
    with sync.connect(klieo_url) as bus:
        yield bus


@pytest.fixture
def klieo_names() -> str:
    return "t" + uuid.uuid4().hex[:12]


class Spawner:
    """Starts processes connected to the test broker and reaps them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.processes: list[BaseProcess] = []
        self._ctx = mp.get_context("spawn")

    def __call__(self, target: Callable[..., Any], *args: Any) -> BaseProcess:
        """Start ``target(*args)`` in a new process whose ``KLIEO_BUS_URL`` is
        the broker's URL. ``target`` must be importable (module level)."""
        old = os.environ.get(ENV_URL)
        os.environ[ENV_URL] = self.url
        try:
            proc: BaseProcess = self._ctx.Process(target=target, args=args)
            proc.start()
        finally:
            if old is None:
                del os.environ[ENV_URL]
            else:
                os.environ[ENV_URL] = old
        self.processes.append(proc)
        return proc

    def reap(self) -> list[str]:
        """Kill and join every process still running, with its children;
        returns their names."""
        leaked = []
        for proc in self.processes:
            if proc.is_alive() and proc.pid is not None:
                leaked.append(f"{proc.name} (pid {proc.pid})")
                try:  # its own children too (a run_pool spawns workers)
                    tree = psutil.Process(proc.pid).children(recursive=True)
                except psutil.Error:
                    tree = []
                proc.kill()
                for child in tree:
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                psutil.wait_procs(tree, timeout=30)
            proc.join()
        return leaked


@pytest.fixture
def klieo_spawn(klieo_url: str) -> Iterator[Spawner]:
    spawner = Spawner(klieo_url)
    yield spawner
    leaked = spawner.reap()
    if leaked:
        pytest.fail(f"processes still running after the test: {', '.join(leaked)}")
