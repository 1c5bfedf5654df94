"""A closed bus: every operation raises Closed, its streams end, and closing
again is harmless."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import klieo_shm
from klieo_shm import Job

from .world import WAIT, World


@pytest.fixture(autouse=True)
def _collect_garbage_here() -> Iterator[None]:
    """A failing call may leave an un-awaited coroutine behind: have its
    warning reported on this test, not on whichever test runs next."""
    yield
    gc.collect()


OPERATIONS = {
    "publish": lambda bus, w: bus.pubsub.publish(w.subject("x"), b"x"),
    "subscribe": lambda bus, w: bus.pubsub.subscribe(w.subject("x"), w.name("d")),
    "delete_durable": lambda bus, w: bus.pubsub.delete_durable(w.name("d")),
    "request": lambda bus, w: bus.requests.request(w.subject("x"), b"x", 1.0),
    "serve": lambda bus, w: bus.requests.serve(w.subject("x"), lambda p: p),
    "get": lambda bus, w: bus.kv.get(w.name("b"), "k"),
    "put": lambda bus, w: bus.kv.put(w.name("b"), "k", b"v"),
    "cas": lambda bus, w: bus.kv.cas(w.name("b"), "k", b"v", None),
    "delete": lambda bus, w: bus.kv.delete(w.name("b"), "k"),
    "keys": lambda bus, w: bus.kv.keys(w.name("b")),
    "watch": lambda bus, w: bus.kv.watch(w.name("b")),
    "lease": lambda bus, w: bus.kv.lease(w.name("b"), "k", 30.0),
    "enqueue": lambda bus, w: bus.jobs.enqueue(w.name("q"), Job(b"x")),
    "claim": lambda bus, w: bus.jobs.claim(w.name("q"), "w", 30.0),
    "claim_many": lambda bus, w: bus.jobs.claim_many(w.name("q"), "w", 30.0, 10),
    "dead_letters": lambda bus, w: bus.jobs.dead_letters(w.name("q")),
    "requeue": lambda bus, w: bus.jobs.requeue(w.name("q"), "id"),
    "discard": lambda bus, w: bus.jobs.discard(w.name("q"), "id"),
    "stats": lambda bus, w: bus.jobs.stats(w.name("q")),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_operation_on_a_closed_bus_raises_closed(world: World, operation: str):
    bus = await world.connect()
    await bus.close()

    with pytest.raises(klieo_shm.Closed):
        await OPERATIONS[operation](bus, world)


async def test_closing_a_bus_twice_is_allowed(world: World):
    bus = await world.connect()

    await bus.close()
    await bus.close()


async def test_closing_a_bus_ends_its_streams(world: World):
    bus = await world.connect()
    stream = await bus.pubsub.subscribe(world.subject("x"), world.name("d"))
    watch = await bus.kv.watch(world.name("b"))

    await bus.close()

    assert await stream.next(timeout=WAIT) is None
    assert await watch.next(timeout=WAIT) is None


async def test_closing_one_bus_leaves_another_working(world: World):
    closed = await world.connect()
    live = await world.connect()
    bucket = world.name("b")
    await closed.kv.put(bucket, "k", b"v")

    await closed.close()

    assert (await live.kv.get(bucket, "k")).value == b"v"


async def test_leaving_the_bus_context_closes_it(world: World):
    async with await world.connect() as bus:  # `with` in the blocking flavour
        await bus.kv.put(world.name("b"), "k", b"v")

    with pytest.raises(klieo_shm.Closed):
        await bus.kv.get(world.name("b"), "k")
