"""Pubsub in batches: ``next_many`` hands out deliveries that are ready, each
resolved on its own; ``Pubsub.ack_many`` acks a batch, and none of it on bad
input."""

from __future__ import annotations

import asyncio

import pytest

import klieo_shm

from .world import NOTHING, WAIT, World, drain

SHORT_ACK_WAIT = 0.3


async def _stream(world: World, *, ack_wait: float | None = None):
    pubsub, *_ = await world.connect()
    subject = world.subject("batch")
    stream = await pubsub.subscribe(subject, world.name("d"), ack_wait=ack_wait)
    return pubsub, subject, stream


async def _take(stream, count: int, max_msgs: int) -> list:
    """Batches of ``next_many`` until ``count`` deliveries came."""
    got: list = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            batch = await stream.next_many(max_msgs, timeout=WAIT)
            assert 1 <= len(batch) <= max_msgs
            got.extend(batch)
    return got


async def test_next_many_hands_out_every_message_once_in_order(world: World):
    pubsub, subject, stream = await _stream(world)
    sent = [b"%d" % i for i in range(12)]
    for data in sent:
        await pubsub.publish(subject, data)

    got = await _take(stream, 12, 5)

    assert [msg.payload for msg in got] == sent
    assert [msg.seq for msg in got] == sorted(msg.seq for msg in got)
    assert {msg.delivery_count for msg in got} == {1}
    await pubsub.ack_many(got)
    assert await drain(stream) == []


async def test_next_many_takes_every_delivery_that_is_ready_at_once(world: World):
    if world.url.startswith("nats://"):
        pytest.skip("nats: each next pulls one delivery, so batches are mostly of one")
    if world.flavour == "sync":
        pytest.skip("the blocking flavour publishes one call at a time, not as one batch")
    pubsub, subject, stream = await _stream(world)
    sent = [b"%d" % i for i in range(10)]
    # published in one loop turn: one stored batch, one delivery frame on shm
    await asyncio.gather(*[pubsub.publish(subject, data) for data in sent])

    batch = await stream.next_many(100, timeout=WAIT)

    assert [msg.payload for msg in batch] == sent
    await pubsub.ack_many(batch)


async def test_cancelling_a_waiting_next_many_loses_no_message(world: World):
    if world.flavour == "sync":
        pytest.skip("a blocking call cannot be cancelled from another thread")
    pubsub, subject, stream = await _stream(world)
    waiting = asyncio.ensure_future(stream.next_many(10, timeout=WAIT))
    await asyncio.sleep(0.2)  # it is waiting now: that is the case under test
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    await pubsub.publish(subject, b"kept")

    batch = await stream.next_many(10, timeout=WAIT)
    assert [msg.payload for msg in batch] == [b"kept"]
    await pubsub.ack_many(batch)


async def test_next_many_waits_for_a_message_published_meanwhile(world: World):
    pubsub, subject, stream = await _stream(world)
    waiting = asyncio.ensure_future(stream.next_many(10, timeout=WAIT))
    await asyncio.sleep(0.2)  # it is waiting now: that is the case under test
    assert not waiting.done()

    await pubsub.publish(subject, b"late")

    batch = await waiting
    assert [msg.payload for msg in batch] == [b"late"]
    await pubsub.ack_many(batch)


async def test_next_many_with_nothing_ready_times_out(world: World):
    _, _, stream = await _stream(world)

    with pytest.raises(klieo_shm.Timeout):
        await stream.next_many(10, timeout=NOTHING)


async def test_next_many_on_a_closed_stream_returns_an_empty_list(world: World):
    _, _, stream = await _stream(world)
    await stream.close()

    assert await stream.next_many(10, timeout=WAIT) == []


@pytest.mark.parametrize("size", [0, -1, 2.0, None])
async def test_next_many_refuses_a_batch_size_that_is_not_a_positive_int(
    world: World, size: object
):
    _, _, stream = await _stream(world)

    with pytest.raises(klieo_shm.InvalidArgument):
        await stream.next_many(size, timeout=NOTHING)


async def test_ack_many_acks_every_message_of_the_batch(world: World):
    pubsub, subject, stream = await _stream(world, ack_wait=SHORT_ACK_WAIT)
    for i in range(6):
        await pubsub.publish(subject, b"%d" % i)
    got = await _take(stream, 6, 10)

    await pubsub.ack_many(got)

    assert all(msg.resolved for msg in got)
    with pytest.raises(klieo_shm.Timeout):  # past ack_wait: nothing comes back
        await stream.next_many(10, timeout=SHORT_ACK_WAIT + 1.0)


async def test_ack_many_of_nothing_does_nothing(world: World):
    pubsub, *_ = await world.connect()

    await pubsub.ack_many([])


async def test_messages_of_a_batch_are_resolved_one_by_one_too(world: World):
    pubsub, subject, stream = await _stream(world, ack_wait=30.0)
    for i in range(3):
        await pubsub.publish(subject, b"%d" % i)
    one, two, three = await _take(stream, 3, 3)

    await two.nak()
    await pubsub.ack_many([one, three])

    again = await stream.next(timeout=WAIT)
    assert (again.payload, again.delivery_count) == (b"1", 2)
    await again.ack()


@pytest.mark.parametrize("bad", ["resolved", "twice", "not a message"])
async def test_ack_many_with_a_bad_item_acks_none(world: World, bad: str):
    pubsub, subject, stream = await _stream(world)
    for i in range(3):
        await pubsub.publish(subject, b"%d" % i)
    one, two, three = await _take(stream, 3, 3)
    await one.term()
    batch = {
        "resolved": [two, one, three],
        "twice": [two, three, two],
        "not a message": [two, b"2", three],
    }[bad]
    error = klieo_shm.InvalidArgument if bad == "not a message" else klieo_shm.AlreadyAcknowledged

    with pytest.raises(error):
        await pubsub.ack_many(batch)

    assert not two.resolved
    assert not three.resolved
    await two.ack()  # still open: ack_many marked none of them
    await three.ack()
