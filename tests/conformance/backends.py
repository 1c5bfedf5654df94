"""The backends the conformance suite runs against.

Each entry of ``BACKENDS`` maps a test id to a context manager that sets the
backend up once per test session (per xdist worker) — start a daemon or a
server, say — and yields a :class:`Backend`. Adding a backend is one line::

    BACKENDS["shm"] = shm_backend   # shm_backend(): Iterator[Backend], a @contextmanager

Every test gets its own ``Backend.url(name)`` with a unique ``name``; all
buses a test connects with that URL see the same bus, and nothing of other
tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_PAYLOAD = 64 * 1024
"""The payload limit the suite configures where a backend lets it."""


def _nothing_to_forget(name: str) -> None:
    return None


@dataclass(frozen=True)
class Backend:
    url: Callable[[str], str]
    """A URL for one test's bus, given a name unique to the test."""
    max_payload: int
    """The largest payload the backend accepts, as it was configured."""
    forget: Callable[[str], None] = _nothing_to_forget
    """Called with the test's name once its buses are closed."""


@contextlib.contextmanager
def memory_backend() -> Iterator[Backend]:
    import klieo_shm.memory

    def forget(name: str) -> None:
        klieo_shm.memory.forget(name)

    yield Backend(
        url=lambda name: f"memory://{name}?max_payload={MAX_PAYLOAD}",
        max_payload=MAX_PAYLOAD,
        forget=forget,
    )


@contextlib.contextmanager
def shm_backend() -> Iterator[Backend]:
    """One klieo-shmd per test session (per xdist worker), on its own socket
    in a private temporary directory; stopped at the end, leaving no segments."""
    import tempfile

    from klieo_shm.daemon import spawn_daemon

    with tempfile.TemporaryDirectory(prefix="klieo-conf-") as tmp:
        sock = f"{tmp}/klieo.sock"
        # --keep-min 4K: most batches with a payload of some size are kept in
        # the publisher's arena, so the whole contract runs over both paths
        args = (
            *("--max-payload", str(MAX_PAYLOAD), "--arena-size", "4M", "--store-size", "64M"),
            *("--keep-min", "4K"),
        )
        with spawn_daemon(sock, *args):
            yield Backend(url=lambda name: f"shm://{sock}?bus={name}", max_payload=MAX_PAYLOAD)


@contextlib.contextmanager
def nats_backend() -> Iterator[Backend]:
    """One nats-server with JetStream per test session (per xdist worker), on
    a free loopback port; each test's bus lives under its own prefix."""
    from klieo_shm.nats.testing import nats_server

    with nats_server() as url:
        yield Backend(
            url=lambda name: f"{url}?prefix={name}&max_payload={MAX_PAYLOAD}&storage=memory",
            max_payload=MAX_PAYLOAD,
        )


def not_served(backend_id: str, module: str, function: str, params: dict[str, object]) -> str:
    """Why a scenario cannot run on a backend yet ("" when it can). Every
    backend serves every scenario today; keep this hook for the next one."""
    return ""


BACKENDS: dict[str, Callable[[], contextlib.AbstractContextManager[Backend]]] = {
    "memory": memory_backend,
    "shm": shm_backend,
    "nats": nats_backend,
}
