"""The ``memory://`` backend: the whole contract in one process, no daemon.

The reference implementation of klieo_shm's four interfaces, and what unit
tests use. ``memory://`` opens a private world; ``memory://NAME`` shares one
world per NAME in the process (it lives as long as the process). Several
buses on one world — async or blocking, on any threads — behave as several
processes on one broker: closing a bus ends its streams, services, leases
and claims as a dead process's would. URL options and the lifetime rules are
in :mod:`._world`; the threading model in :mod:`._core`.
"""

from __future__ import annotations

from .._bus import Bus
from ._core import Session
from ._jobs import MemoryJobQueue
from ._kv import MemoryKvStore
from ._requests import MemoryRequestReply
from ._streams import MemoryPubsub
from ._world import attach, detach, forget

__all__ = ["forget", "open_bus"]


async def open_bus(url: str) -> Bus:
    """A bus on the memory world ``url`` names (see the module docstring)."""
    world, options = attach(url)
    try:
        session = Session(url)
        pubsub = MemoryPubsub(world, session, options)
        requests = MemoryRequestReply(world, session)
        kv = MemoryKvStore(world, session)
        jobs = MemoryJobQueue(world, session, options)
    except BaseException:
        detach(world)
        raise

    async def close() -> None:
        await world.close_session(session)

    return Bus(url, pubsub, requests, kv, jobs, close)
