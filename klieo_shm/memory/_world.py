"""A memory world: the state one or more buses share, and the registry of
named worlds.

``memory://`` gives each bus a fresh world of its own. ``memory://NAME``
shares one world per NAME in the process, and that world lives as long as
the process (like a broker that keeps running): closing every bus on it and
connecting again finds the same durables, queues and keys. A world's timer
thread runs only while at least one bus is attached; after ``fork`` a child
starts with no named worlds (a world is never shared between processes).

URL query options (``memory://NAME?max_payload=1024&claim_wait=0.1``):

- ``max_payload`` (16 MiB): largest payload, KV value, request or reply;
- ``max_ack_pending`` (1000): unacked deliveries in flight per durable;
- ``max_pending`` (1000000): messages stored and not yet acked or termed,
  over all durables of the world; ``publish`` waits for room, then ``Full``;
- ``max_jobs`` (1000000): jobs (not counting dead letters) per queue;
  ``enqueue`` waits for room, then ``Full``;
- ``publish_timeout`` (5.0 s): how long publish and enqueue wait for room;
- ``claim_wait`` (1.0 s): how long ``claim`` waits for a ready job;
- ``ack_wait`` (30.0 s): the ack_wait of durables subscribed without one.

The first four are limits of the world, fixed by the first bus that opens
it: a later URL that states a different value raises ``InvalidArgument``.
The last three belong to each bus.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

from .._errors import Closed, InvalidArgument, PayloadTooLarge
from .._values import as_bytes
from ._core import Session, Timers, Waiter, WaitSet, wait_for_wake

__all__ = ["BusOptions", "World", "WorldLimits", "attach", "detach", "parse_url"]

T = TypeVar("T")

DEFAULT_MAX_PAYLOAD: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WorldLimits:
    """Limits of one world, fixed when it is created."""

    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_ack_pending: int = 1000
    max_pending: int = 1_000_000
    max_jobs: int = 1_000_000


@dataclass(frozen=True, slots=True)
class BusOptions:
    """Timings of one bus."""

    publish_timeout: float = 5.0
    claim_wait: float = 1.0
    ack_wait: float = 30.0


_INT_OPTIONS: Final = {f.name for f in fields(WorldLimits)}
_FLOAT_OPTIONS: Final = {f.name for f in fields(BusOptions)}


def _parse_int(url: str, name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidArgument("url", url, f"{name} must be an integer >= 1")
    return value


def _parse_float(url: str, name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (0.0 <= value < float("inf")) or (name == "ack_wait" and value == 0.0):
        raise InvalidArgument("url", url, f"{name} must be a finite number of seconds >= 0")
    return value


def parse_url(url: str) -> tuple[str, WorldLimits, dict[str, int], BusOptions]:
    """``(name, limits, limits stated in the URL, bus options)`` of a
    ``memory://`` URL; ``name`` is ``""`` for a private world."""
    parts = urlsplit(url)
    if parts.scheme != "memory":
        raise InvalidArgument("url", url, "scheme must be memory")
    if parts.path not in ("", "/") or parts.fragment:
        raise InvalidArgument("url", url, "must be memory://[NAME][?option=value&...]")
    stated: dict[str, int] = {}
    timings: dict[str, float] = {}
    for key, raw in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key in _INT_OPTIONS:
            stated[key] = _parse_int(url, key, raw)
        elif key in _FLOAT_OPTIONS:
            timings[key] = _parse_float(url, key, raw)
        else:
            known = ", ".join(sorted(_INT_OPTIONS | _FLOAT_OPTIONS))
            raise InvalidArgument("url", url, f"unknown option {key!r} (known: {known})")
    return parts.netloc, WorldLimits(**stated), stated, BusOptions(**timings)


class World:
    """The state of one memory world. See :mod:`._core` for the threading
    model: every attribute below is guarded by :attr:`lock`."""

    def __init__(self, name: str, limits: WorldLimits) -> None:
        # Imported here: the state modules import this one for type names.
        from ._jobs import JobsState
        from ._kv import KvState
        from ._requests import RequestsState
        from ._streams import StreamsState

        self.name = name
        self.limits = limits
        self.lock = threading.RLock()
        self.timers = Timers(self.lock, f"klieo-memory-timers[{name}]")
        self.attached = 0
        self.streams = StreamsState(self)
        self.requests = RequestsState(self)
        self.kv = KvState(self)
        self.jobs = JobsState(self)

    def check_payload(self, payload: object, what: str = "payload") -> bytes:
        """``payload`` as bytes, refusing it over ``max_payload``."""
        data = as_bytes(payload, what)
        if len(data) > self.limits.max_payload:
            raise PayloadTooLarge(len(data), self.limits.max_payload)
        return data

    async def poll(
        self,
        session: Session,
        take: Callable[[], tuple[bool, T | None]],
        waits: WaitSet,
        deadline: float | None,
    ) -> tuple[bool, T | None]:
        """Call ``take`` under the lock until it says done (``(True, value)``)
        or ``deadline`` passes (``(False, None)``), sleeping on ``waits`` in
        between. ``take`` is also the place to raise (``Closed``, …). A
        closing session wakes the sleeper so that ``take`` can see it."""
        while True:
            with self.lock:
                done, value = take()
                if done:
                    return done, value
                if deadline is not None and time.monotonic() >= deadline:
                    return False, None
                waiter = Waiter()
                waits.add(waiter)
                session.waiters.add(waiter)
            try:
                await wait_for_wake(waiter, deadline)
            finally:
                with self.lock:
                    waits.discard(waiter)
                    session.waiters.discard(waiter)

    async def close_session(self, session: Session) -> None:
        """End everything ``session`` owns, as a dead process's would end:
        claims count as an attempt, deliveries go to other members at once,
        leases end, in-flight requests to its servers fail."""
        with self.lock:
            if session.closed:
                return
            session.closed = True
            self.jobs.drop_session(session)
            self.streams.drop_session(session)
            self.kv.drop_session(session)
            tasks = self.requests.drop_session(session)
            session.waiters.wake_all()
        await self.requests.cancel_tasks(tasks)
        detach(self)


def check_open(session: Session) -> None:
    """Raise ``Closed`` if the session's bus was closed."""
    if session.closed:
        raise Closed(session.url)


# -- the registry --------------------------------------------------------------

_registry_lock = threading.Lock()
_named: dict[str, World] = {}


def attach(url: str) -> tuple[World, BusOptions]:
    """The world ``url`` names (created if new) with one more bus attached."""
    name, limits, stated, options = parse_url(url)
    with _registry_lock:
        if not name:
            world = World("", limits)
        else:
            existing = _named.get(name)
            if existing is None:
                world = _named[name] = World(name, limits)
            else:
                world = existing
                for key, value in stated.items():
                    if getattr(world.limits, key) != value:
                        raise InvalidArgument(
                            "url",
                            url,
                            f"world {name!r} was opened with {key}="
                            f"{getattr(world.limits, key)}; a world's limits are fixed",
                        )
        world.attached += 1
        if world.attached == 1:
            world.timers.enable()
    return world, options


def detach(world: World) -> None:
    """One bus fewer on ``world``; the last one stops its timer thread."""
    with _registry_lock:
        world.attached -= 1
        if world.attached == 0:
            world.timers.disable()


def forget(name: str) -> bool:
    """Drop the named world ``name`` from the registry (tests that want a
    fresh world under an old name); buses still on it keep it alive."""
    with _registry_lock:
        return _named.pop(name, None) is not None


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    _named.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
