"""The flavour-neutral driver the conformance scenarios are written against.

A scenario is an ``async def`` test taking ``world``. ``await world.connect()``
gives a bus of the flavour under test:

- ``async``: the bus from ``await klieo_shm.connect(url)``, used as is;
- ``sync``: the bus from ``klieo_shm.sync.connect(url)`` behind
  :class:`Blocking`, which runs every blocking call in a worker thread so the
  scenario can ``await`` it exactly as it awaits the async API.

So the same lines — ``await pubsub.publish(...)``, ``async for msg in stream``,
``async with await kv.lease(...)`` — check both flavours.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import klieo_shm
import klieo_shm.sync

from .backends import Backend

T = TypeVar("T")

WAIT = 10.0
"""Seconds to wait for something that must happen (generous: loaded CI)."""

AT_ONCE = 2.0
"""Bound for "at once" (a dead holder's work handed on): far below the
30 s ack_wait / lease ttl the scenarios use, so it cannot be met by expiry."""

NOTHING = 0.5
"""Seconds to watch for something that must not happen."""


class Blocking:
    """An object of ``klieo_shm.sync`` seen through the async API's shape."""

    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        self._target = target

    def __repr__(self) -> str:
        return f"Blocking({self._target!r})"

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return _wrap(value)

        async def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(_unwrap(a) for a in args)
            return _wrap(await asyncio.to_thread(value, *args, **kwargs))

        return call

    def __iter__(self) -> Any:
        return (_wrap(item) for item in self._target)

    def __aiter__(self) -> Blocking:
        return self

    async def __anext__(self) -> Any:
        item = await asyncio.to_thread(next, self._target, None)
        if item is None:
            raise StopAsyncIteration
        return _wrap(item)

    async def __aenter__(self) -> Blocking:
        await asyncio.to_thread(self._target.__enter__)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._target.__exit__, *exc)


def _wrap(value: Any) -> Any:
    if type(value).__module__ == klieo_shm.sync.__name__:
        return Blocking(value)
    if type(value) is list:  # claim_many's batch
        return [_wrap(item) for item in value]
    return value


def _unwrap(value: Any) -> Any:
    """An argument as the blocking API takes it (ack_many's batch)."""
    if isinstance(value, Blocking):
        return value._target
    if type(value) is list:
        return [_unwrap(item) for item in value]
    return value


class World:
    """One test's view of a backend, in one flavour."""

    def __init__(self, backend: Backend, flavour: str, uid: str) -> None:
        self.backend = backend
        self.flavour = flavour
        self.uid = uid
        self._name = f"conformance-{uid}"
        self.url = backend.url(self._name)
        self._buses: list[Any] = []

    def name(self, base: str) -> str:
        """A durable, bucket or queue name unique to this test."""
        return f"{base}-{self.uid}"

    def subject(self, tokens: str) -> str:
        """A subject (or pattern) unique to this test: ``<uid>.<tokens>``."""
        return f"{self.uid}.{tokens}"

    async def connect(self) -> Any:
        """A new bus on this test's backend, in this test's flavour."""
        if self.flavour == "async":
            bus: Any = await klieo_shm.connect(self.url)
        else:
            bus = Blocking(await asyncio.to_thread(klieo_shm.sync.connect, self.url))
        self._buses.append(bus)
        return bus

    async def aclose_after_test(self) -> None:
        try:
            for bus in reversed(self._buses):
                await bus.close()
        finally:
            self.backend.forget(self._name)


def new_uid() -> str:
    return "t" + uuid.uuid4().hex[:12]


async def eventually(attempt: Callable[[], Awaitable[T]], within: float = WAIT) -> T:
    """Retry ``attempt`` until it stops raising ``BusError``, for up to
    ``within`` seconds; for outcomes that come from the passage of time
    (a TTL running out), where there is no event to await."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await attempt()
        except klieo_shm.BusError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.05)


async def at_once(awaitable: Awaitable[T], bound: float = AT_ONCE) -> T:
    """``awaitable``'s result, failing the test if it takes over ``bound``."""
    limit = asyncio.timeout(bound)
    try:
        async with limit:
            return await awaitable
    except TimeoutError:
        if limit.expired():
            raise AssertionError(f"did not complete within {bound} s") from None
        raise


async def drain(stream: Any, quiet: float = NOTHING) -> list[Any]:
    """Every message that arrives until ``quiet`` seconds pass without one, acked."""
    got = []
    while True:
        try:
            msg = await stream.next(timeout=quiet)
        except klieo_shm.Timeout:
            return got
        assert msg is not None
        await msg.ack()
        got.append(msg)
