"""The memory backend's own rules: URL options, world lifetime, threads."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

import klieo_shm
import klieo_shm.memory
import klieo_shm.sync
from klieo_shm import Job


def _url(query: str = "") -> str:
    return f"memory://mem-{uuid.uuid4().hex[:10]}{query}"


def _timer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("klieo-memory")]


async def test_private_worlds_are_isolated() -> None:
    one = await klieo_shm.connect("memory://")
    two = await klieo_shm.connect("memory://")
    await one.kv.put("b", "k", b"v")

    assert await two.kv.get("b", "k") is None
    await one.close()
    await two.close()


async def test_named_world_outlives_its_buses() -> None:
    url = _url()
    bus = await klieo_shm.connect(url)
    await bus.kv.put("b", "k", b"v")
    await bus.close()

    again = await klieo_shm.connect(url)
    entry = await again.kv.get("b", "k")
    await again.close()

    assert entry is not None
    assert entry.value == b"v"


async def test_forget_gives_a_fresh_world_under_an_old_name() -> None:
    url = _url()
    bus = await klieo_shm.connect(url)
    await bus.kv.put("b", "k", b"v")
    await bus.close()

    assert klieo_shm.memory.forget(url.removeprefix("memory://"))
    again = await klieo_shm.connect(url)
    assert await again.kv.get("b", "k") is None
    await again.close()


async def test_no_timer_thread_is_left_after_the_last_bus_closes() -> None:
    url = _url()
    bus = await klieo_shm.connect(url)
    stream = await bus.pubsub.subscribe("a", "d", ack_wait=60.0)
    await bus.pubsub.publish("a", b"x")
    assert await stream.next(timeout=5.0) is not None
    assert _timer_threads()

    await bus.close()

    assert _timer_threads() == []


async def test_deadlines_that_passed_while_no_bus_was_attached_fire_on_reattach() -> None:
    url = _url()
    bus = await klieo_shm.connect(url)
    await bus.jobs.enqueue("q", Job(b"x"))
    claimed = await bus.jobs.claim("q", "w", 30.0)
    assert claimed is not None
    await claimed.nak(delay=0.2)
    await bus.close()
    await asyncio.sleep(0.3)

    again = await klieo_shm.connect(url)
    retried = await again.jobs.claim("q", "w", 30.0)
    await again.close()

    assert retried is not None
    assert retried.attempt == 2


@pytest.mark.parametrize(
    "query",
    ["?bogus=1", "?max_payload=0", "?max_payload=x", "?claim_wait=-1", "?ack_wait=0"],
)
async def test_bad_url_option_raises_invalid_argument(query: str) -> None:
    with pytest.raises(klieo_shm.InvalidArgument):
        await klieo_shm.connect(_url(query))


async def test_a_worlds_limits_are_fixed_by_its_first_bus() -> None:
    url = _url("?max_payload=10")
    bus = await klieo_shm.connect(url)
    try:
        with pytest.raises(klieo_shm.InvalidArgument):
            await klieo_shm.connect(url.replace("=10", "=20"))
        same = await klieo_shm.connect(url)
        await same.close()
        with pytest.raises(klieo_shm.PayloadTooLarge) as caught:
            await bus.kv.put("b", "k", b"x" * 11)
        assert (caught.value.size, caught.value.limit) == (11, 10)
    finally:
        await bus.close()


async def test_a_blocking_bus_wakes_an_async_waiter_on_the_same_world() -> None:
    url = _url()
    bus = await klieo_shm.connect(url)
    stream = await bus.pubsub.subscribe("a.*", "d")
    blocking = await asyncio.to_thread(klieo_shm.sync.connect, url)
    try:
        waiting = asyncio.create_task(stream.next(timeout=5.0))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(blocking.pubsub.publish, "a.b", b"hi")
        msg = await waiting
        assert msg is not None
        assert msg.payload == b"hi"
        await msg.ack()
    finally:
        await asyncio.to_thread(blocking.close)
        await bus.close()
