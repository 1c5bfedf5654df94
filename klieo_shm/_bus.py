"""``connect(url)``: the one entry point, choosing a backend by URL scheme.

| URL                   | backend                                     |
|-----------------------|---------------------------------------------|
| ``shm://[SOCKET]``    | the ``klieo-shmd`` broker (the default)     |
| ``memory://[NAME]``   | in-process; one world per NAME per process  |
| ``nats://HOST:PORT``  | NATS JetStream (extra ``nats``)             |

``url=None`` reads ``KLIEO_BUS_URL``, else uses ``shm://`` with the default
socket path.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Final, Protocol, cast
from urllib.parse import urlsplit

from ._errors import InvalidArgument
from ._interfaces import JobQueue, KvStore, Pubsub, RequestReply

__all__ = ["ENV_URL", "Bus", "connect", "default_socket_path", "resolve_url"]

ENV_URL: Final = "KLIEO_BUS_URL"

_BACKENDS: Final = {
    "memory": "klieo_shm.memory",
    "shm": "klieo_shm.shm",
    "nats": "klieo_shm.nats",
}


def default_socket_path() -> str:
    """``$XDG_RUNTIME_DIR/klieo/klieo.sock``, else ``/tmp/klieo-<uid>/klieo.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "klieo", "klieo.sock")
    return f"/tmp/klieo-{os.getuid()}/klieo.sock"


def resolve_url(url: str | None = None) -> str:
    """The URL ``connect(url)`` uses: ``url``, else ``$KLIEO_BUS_URL``, else
    ``shm://`` + the default socket path. Raises ``InvalidArgument`` for an
    unknown scheme."""
    chosen = url or os.environ.get(ENV_URL) or f"shm://{default_socket_path()}"
    scheme = urlsplit(chosen).scheme
    if scheme not in _BACKENDS:
        raise InvalidArgument(
            "url", chosen, f"scheme must be one of {', '.join(sorted(_BACKENDS))}"
        )
    return chosen


class Bus:
    """A connection to one bus: ``pubsub``, ``requests``, ``kv``, ``jobs``.

    Iterating gives those four in that order, so
    ``pubsub, requests, kv, jobs = bus``. ``close()`` (or leaving
    ``async with``) ends every stream, service, lease and claim of this
    connection; the broker hands unacknowledged work to others.
    """

    __slots__ = ("_close", "_closed", "jobs", "kv", "pubsub", "requests", "url")

    def __init__(
        self,
        url: str,
        pubsub: Pubsub,
        requests: RequestReply,
        kv: KvStore,
        jobs: JobQueue,
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.url = url
        self.pubsub = pubsub
        self.requests = requests
        self.kv = kv
        self.jobs = jobs
        self._close = close
        self._closed = False

    def __repr__(self) -> str:
        return f"Bus({self.url!r})"

    def __iter__(self) -> Iterator[Pubsub | RequestReply | KvStore | JobQueue]:
        return iter((self.pubsub, self.requests, self.kv, self.jobs))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Backend(Protocol):
    async def open_bus(self, url: str) -> Bus: ...


async def connect(url: str | None = None) -> Bus:
    """Connect to the bus at ``url`` (see the module docstring)."""
    resolved = resolve_url(url)
    module = importlib.import_module(_BACKENDS[urlsplit(resolved).scheme])
    return await cast(_Backend, module).open_bus(resolved)
