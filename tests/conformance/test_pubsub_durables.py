"""Pubsub: durable consumers — competing members, messages kept while no
member is connected, hand-over on close, delete_durable."""

from __future__ import annotations

import asyncio

import pytest

import klieo_shm

from .world import NOTHING, WAIT, World, at_once, drain


async def test_members_of_one_durable_share_messages_each_going_to_exactly_one(world: World):
    producer, *_ = await world.connect()
    members = [(await world.connect()).pubsub for _ in range(3)]
    subject, durable = world.subject("work"), world.name("group")
    streams = [await m.subscribe(subject, durable) for m in members]
    sent = [b"m%d" % i for i in range(30)]
    for payload in sent:
        await producer.publish(subject, payload)

    received = await asyncio.gather(*(drain(s, quiet=1.0) for s in streams))

    payloads = [m.payload for got in received for m in got]
    assert sorted(payloads) == sorted(sent)  # every message once, none to two members


async def test_message_held_unacked_by_one_member_is_not_given_to_another(world: World):
    a, *_ = await world.connect()
    b, *_ = await world.connect()
    subject, durable = world.subject("work"), world.name("group")
    first = await a.subscribe(subject, durable)
    await a.publish(subject, b"only")
    msg = await first.next(timeout=WAIT)
    second = await b.subscribe(subject, durable)

    with pytest.raises(klieo_shm.Timeout):
        await second.next(timeout=NOTHING)
    await msg.ack()


async def test_durable_keeps_messages_published_while_no_member_is_connected(world: World):
    pubsub, *_ = await world.connect()
    subject, durable = world.subject("offline"), world.name("d")
    stream = await pubsub.subscribe(subject, durable)
    await stream.close()

    await pubsub.publish(subject, b"one")
    await pubsub.publish(subject, b"two")
    stream = await pubsub.subscribe(subject, durable)

    assert sorted(m.payload for m in await drain(stream)) == [b"one", b"two"]


async def test_durable_outlives_the_bus_that_made_it(world: World):
    first = await world.connect()
    later, *_ = await world.connect()
    subject, durable = world.subject("outlive"), world.name("d")
    await first.pubsub.subscribe(subject, durable)
    await first.close()
    await later.publish(subject, b"kept")

    again = await later.subscribe(subject, durable)

    assert [m.payload for m in await drain(again)] == [b"kept"]


async def test_acked_message_is_not_delivered_again_to_a_new_member(world: World):
    pubsub, *_ = await world.connect()
    subject, durable = world.subject("acked"), world.name("d")
    stream = await pubsub.subscribe(subject, durable)
    await pubsub.publish(subject, b"done")
    await (await stream.next(timeout=WAIT)).ack()
    await stream.close()

    again = await pubsub.subscribe(subject, durable)

    with pytest.raises(klieo_shm.Timeout):
        await again.next(timeout=NOTHING)


async def test_closing_a_stream_hands_its_unacked_messages_to_another_member_at_once(
    world: World,
):
    a, *_ = await world.connect()
    b, *_ = await world.connect()
    subject, durable = world.subject("handover"), world.name("group")
    holder = await a.subscribe(subject, durable, ack_wait=30.0)
    await a.publish(subject, b"held")
    held = await holder.next(timeout=WAIT)
    other = await b.subscribe(subject, durable, ack_wait=30.0)

    await holder.close()
    msg = await at_once(other.next())

    assert msg.payload == b"held"
    assert msg.seq == held.seq
    assert msg.delivery_count == 2
    await msg.ack()


async def test_closed_stream_next_returns_none_and_iteration_ends(world: World):
    pubsub, *_ = await world.connect()
    stream = await pubsub.subscribe(world.subject("x"), world.name("d"))

    await stream.close()

    assert await stream.next(timeout=WAIT) is None
    assert [m async for m in stream] == []


async def test_close_of_a_stream_is_idempotent(world: World):
    pubsub, *_ = await world.connect()
    stream = await pubsub.subscribe(world.subject("x"), world.name("d"))

    await stream.close()
    await stream.close()


async def test_close_wakes_a_pending_next_with_none(world: World):
    pubsub, *_ = await world.connect()
    stream = await pubsub.subscribe(world.subject("x"), world.name("d"))
    pending = asyncio.ensure_future(stream.next(timeout=WAIT))
    await asyncio.sleep(0.1)  # let the next() start waiting; it must end either way

    await stream.close()

    assert await pending is None


async def test_delete_durable_ends_its_members_streams(world: World):
    pubsub, *_ = await world.connect()
    durable = world.name("d")
    stream = await pubsub.subscribe(world.subject("x"), durable)

    await pubsub.delete_durable(durable)

    assert await stream.next(timeout=WAIT) is None


async def test_delete_durable_drops_its_pending_messages(world: World):
    pubsub, *_ = await world.connect()
    subject, durable = world.subject("x"), world.name("d")
    stream = await pubsub.subscribe(subject, durable)
    await stream.close()
    await pubsub.publish(subject, b"pending")

    await pubsub.delete_durable(durable)
    again = await pubsub.subscribe(subject, durable)

    with pytest.raises(klieo_shm.Timeout):
        await again.next(timeout=NOTHING)


async def test_delete_durable_of_unknown_durable_raises_not_found(world: World):
    pubsub, *_ = await world.connect()
    durable = world.name("never")

    with pytest.raises(klieo_shm.NotFound) as caught:
        await pubsub.delete_durable(durable)

    assert caught.value.name == durable


async def test_subscribing_an_existing_durable_with_another_subject_raises_invalid_argument(
    world: World,
):
    pubsub, *_ = await world.connect()
    durable = world.name("d")
    await pubsub.subscribe(world.subject("one"), durable)

    with pytest.raises(klieo_shm.InvalidArgument):
        await pubsub.subscribe(world.subject("two"), durable)


async def test_durables_with_different_names_do_not_compete(world: World):
    pubsub, *_ = await world.connect()
    subject = world.subject("x")
    a = await pubsub.subscribe(subject, world.name("a"))
    await pubsub.subscribe(subject, world.name("b"))  # holds its copy, never reads

    await pubsub.publish(subject, b"m")

    assert [m.payload for m in await drain(a)] == [b"m"]
