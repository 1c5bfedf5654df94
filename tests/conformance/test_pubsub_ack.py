"""Pubsub: acknowledgement — exactly one of ack/nak/term, and at-least-once
redelivery after ack_wait, after nak(delay), and when the holder goes away."""

from __future__ import annotations

import pytest

import klieo_shm

from .world import NOTHING, WAIT, World, at_once

SHORT_ACK_WAIT = 0.3


async def _one(world: World, *, ack_wait: float | None = None):
    pubsub, *_ = await world.connect()
    subject = world.subject("ack")
    stream = await pubsub.subscribe(subject, world.name("d"), ack_wait=ack_wait)
    await pubsub.publish(subject, b"payload")
    msg = await stream.next(timeout=WAIT)
    return stream, msg


RESOLUTIONS = {
    "ack": lambda msg: msg.ack(),
    "nak": lambda msg: msg.nak(),
    "term": lambda msg: msg.term(),
}


@pytest.mark.parametrize("first", sorted(RESOLUTIONS))
@pytest.mark.parametrize("second", sorted(RESOLUTIONS))
async def test_second_resolution_of_a_delivery_raises_already_acknowledged(
    world: World, first: str, second: str
):
    _, msg = await _one(world)
    await RESOLUTIONS[first](msg)

    with pytest.raises(klieo_shm.AlreadyAcknowledged) as caught:
        await RESOLUTIONS[second](msg)

    assert caught.value.previous == first


async def test_in_progress_after_ack_raises_already_acknowledged(world: World):
    _, msg = await _one(world)
    await msg.ack()

    with pytest.raises(klieo_shm.AlreadyAcknowledged):
        await msg.in_progress()


async def test_acked_message_is_not_redelivered(world: World):
    stream, msg = await _one(world, ack_wait=SHORT_ACK_WAIT)

    await msg.ack()

    with pytest.raises(klieo_shm.Timeout):
        await stream.next(timeout=SHORT_ACK_WAIT + 1.0)


async def test_unacked_message_is_redelivered_after_ack_wait(world: World):
    stream, msg = await _one(world, ack_wait=SHORT_ACK_WAIT)

    again = await stream.next(timeout=WAIT)

    assert again.seq == msg.seq
    assert again.payload == msg.payload
    assert again.subject == msg.subject
    assert again.delivery_count == 2
    await again.ack()


async def test_delivery_count_grows_with_each_redelivery(world: World):
    stream, msg = await _one(world, ack_wait=SHORT_ACK_WAIT)
    counts = [msg.delivery_count]
    for _ in range(2):
        counts.append((await stream.next(timeout=WAIT)).delivery_count)

    assert counts == [1, 2, 3]


async def test_nak_without_delay_redelivers(world: World):
    stream, msg = await _one(world, ack_wait=30.0)

    await msg.nak()
    again = await stream.next(timeout=WAIT)

    assert (again.seq, again.payload, again.delivery_count) == (msg.seq, b"payload", 2)
    await again.ack()


async def test_nak_with_delay_redelivers_after_the_delay_and_not_before(world: World):
    stream, msg = await _one(world, ack_wait=30.0)

    await msg.nak(delay=1.0)

    with pytest.raises(klieo_shm.Timeout):
        await stream.next(timeout=0.3)
    again = await stream.next(timeout=WAIT)
    assert again.seq == msg.seq
    assert again.delivery_count == 2
    await again.ack()


async def test_term_never_redelivers(world: World):
    stream, msg = await _one(world, ack_wait=SHORT_ACK_WAIT)

    await msg.term()

    with pytest.raises(klieo_shm.Timeout):
        await stream.next(timeout=SHORT_ACK_WAIT + 1.0)


async def test_in_progress_restarts_the_ack_wait_clock(world: World):
    ack_wait = 1.0
    stream, msg = await _one(world, ack_wait=ack_wait)

    # For 2.5 x ack_wait, report progress every 0.3 s: nothing is redelivered.
    for _ in range(8):
        with pytest.raises(klieo_shm.Timeout):
            await stream.next(timeout=0.3)
        await msg.in_progress()
    await msg.ack()

    with pytest.raises(klieo_shm.Timeout):
        await stream.next(timeout=ack_wait + 0.5)


async def test_unacked_message_is_redelivered_at_once_when_the_holders_bus_closes(world: World):
    holder_bus = await world.connect()
    other, *_ = await world.connect()
    subject, durable = world.subject("dies"), world.name("group")
    holder = await holder_bus.pubsub.subscribe(subject, durable, ack_wait=30.0)
    await other.publish(subject, b"orphan")
    held = await holder.next(timeout=WAIT)
    stream = await other.subscribe(subject, durable, ack_wait=30.0)

    await holder_bus.close()
    msg = await at_once(stream.next())

    assert (msg.payload, msg.seq, msg.delivery_count) == (b"orphan", held.seq, 2)
    await msg.ack()


async def test_unacked_message_is_redelivered_to_a_later_member_after_the_holder_closes(
    world: World,
):
    holder_bus = await world.connect()
    subject, durable = world.subject("later"), world.name("d")
    holder = await holder_bus.pubsub.subscribe(subject, durable, ack_wait=30.0)
    await holder_bus.pubsub.publish(subject, b"orphan")
    await holder.next(timeout=WAIT)
    await holder_bus.close()

    late, *_ = await world.connect()
    stream = await late.subscribe(subject, durable)
    msg = await at_once(stream.next())

    assert msg.payload == b"orphan"
    await msg.ack()


async def test_ack_wait_given_on_a_later_subscribe_updates_the_durable(world: World):
    pubsub, *_ = await world.connect()
    subject, durable = world.subject("update"), world.name("d")
    first = await pubsub.subscribe(subject, durable, ack_wait=30.0)
    await first.close()
    stream = await pubsub.subscribe(subject, durable, ack_wait=SHORT_ACK_WAIT)
    await pubsub.publish(subject, b"x")
    msg = await stream.next(timeout=WAIT)

    again = await stream.next(timeout=WAIT)

    assert (again.seq, again.delivery_count) == (msg.seq, 2)
    await again.ack()


async def test_unacked_messages_do_not_stop_other_durables(world: World):
    pubsub, *_ = await world.connect()
    subject = world.subject("stuck")
    stuck = await pubsub.subscribe(subject, world.name("stuck"), ack_wait=30.0)
    live = await pubsub.subscribe(subject, world.name("live"))
    for i in range(20):
        await pubsub.publish(subject, b"%d" % i)
    await stuck.next(timeout=WAIT)  # held, never acked

    got = []
    for _ in range(20):
        msg = await live.next(timeout=WAIT)
        got.append(msg.payload)
        await msg.ack()

    assert sorted(got) == sorted(b"%d" % i for i in range(20))
    with pytest.raises(klieo_shm.Timeout):
        await live.next(timeout=NOTHING)
