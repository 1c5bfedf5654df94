"""Blocking requests on direct links from the caller's own thread (no hop
to the bus's loop thread once the route is known)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from shm_helpers import bus_on

import klieo_shm
import klieo_shm.sync
from klieo_shm._values import NEEDS_ROUND_TRIP

WAIT = 30.0


@pytest.fixture
def client(daemon: str) -> Iterator[klieo_shm.sync.Bus]:
    with klieo_shm.sync.connect(f"shm://{daemon}") as bus:
        yield bus


def _block_loop(bus: klieo_shm.sync.Bus) -> tuple[threading.Event, threading.Event]:
    """Hold the bus's loop thread until the first event is set (or WAIT
    passes, which sets the second)."""
    release, gave_up = threading.Event(), threading.Event()

    async def hold() -> None:
        if not release.wait(WAIT):  # blocks the loop thread itself
            gave_up.set()

    asyncio.run_coroutine_threadsafe(hold(), bus.requests._link.portal.loop)  # type: ignore[attr-defined]
    return release, gave_up


def _hangs_on_hang(started: asyncio.Event):  # type: ignore[no-untyped-def]
    """An echo handler that never answers ``b"hang"`` (setting ``started``)."""

    async def handler(payload: bytes) -> bytes:
        if payload == b"hang":
            started.set()
            await asyncio.Event().wait()
        return payload

    return handler


async def test_a_known_route_is_used_from_the_calling_thread(
    daemon: str, client: klieo_shm.sync.Bus
) -> None:
    local = client.requests._link.request_local  # type: ignore[attr-defined]
    async with bus_on(daemon) as server:
        await server.requests.serve("s.echo", lambda p: p.upper())
        assert local("s.echo", b"x", WAIT) is NEEDS_ROUND_TRIP  # no route yet
        assert await asyncio.to_thread(client.requests.request, "s.echo", b"a", WAIT) == b"A"
        release, gave_up = _block_loop(client)
        try:
            # the bus's loop is held: only a request from this thread can answer
            got = await asyncio.to_thread(client.requests.request, "s.echo", b"b", WAIT)
        finally:
            release.set()
        assert got == b"B"
        assert not gave_up.is_set()


async def test_a_timed_out_request_leaves_the_link_usable(
    daemon: str, client: klieo_shm.sync.Bus
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(payload: bytes) -> bytes:
        if payload == b"slow":
            started.set()
            await release.wait()
        return payload

    async with bus_on(daemon) as server:
        await server.requests.serve("s.slow", handler)
        assert await asyncio.to_thread(client.requests.request, "s.slow", b"warm", WAIT) == b"warm"
        with pytest.raises(klieo_shm.Timeout):
            await asyncio.to_thread(client.requests.request, "s.slow", b"slow", 0.2)
        await asyncio.wait_for(started.wait(), WAIT)
        release.set()  # its late reply comes on the same link, ahead of the next
        assert await asyncio.to_thread(client.requests.request, "s.slow", b"next", WAIT) == b"next"


async def test_a_request_fails_at_once_when_the_serving_bus_closes(
    daemon: str, client: klieo_shm.sync.Bus
) -> None:
    started = asyncio.Event()
    handler = _hangs_on_hang(started)

    server = await klieo_shm.connect(f"shm://{daemon}")
    try:
        await server.requests.serve("s.dies", handler)
        assert await asyncio.to_thread(client.requests.request, "s.dies", b"warm", WAIT) == b"warm"
        pending = asyncio.ensure_future(
            asyncio.to_thread(client.requests.request, "s.dies", b"hang", WAIT)
        )
        await asyncio.wait_for(started.wait(), WAIT)
        await server.close()
        with pytest.raises(klieo_shm.Closed):
            await asyncio.wait_for(pending, WAIT)
    finally:
        await server.close()


async def test_closing_the_bus_wakes_a_thread_waiting_on_a_link(daemon: str) -> None:
    started = asyncio.Event()
    handler = _hangs_on_hang(started)

    async with bus_on(daemon) as server:
        await server.requests.serve("s.wait", handler)
        bus = klieo_shm.sync.connect(f"shm://{daemon}")
        try:
            assert await asyncio.to_thread(bus.requests.request, "s.wait", b"warm", WAIT) == b"warm"
            pending = asyncio.ensure_future(
                asyncio.to_thread(bus.requests.request, "s.wait", b"hang", WAIT)
            )
            await asyncio.wait_for(started.wait(), WAIT)
        finally:
            await asyncio.to_thread(bus.close)
        with pytest.raises(klieo_shm.Closed):
            await asyncio.wait_for(pending, WAIT)
