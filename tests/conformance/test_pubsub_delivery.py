"""Pubsub: what a subscriber receives — Msg fields, payload types, wildcards,
fan-out to durables, and what is not stored."""

from __future__ import annotations

import pytest

import klieo_shm

from .world import NOTHING, WAIT, World, drain


async def test_msg_carries_subject_payload_headers_seq_and_first_delivery_count(world: World):
    pubsub, *_ = await world.connect()
    subject = world.subject("orders.created")
    stream = await pubsub.subscribe(subject, world.name("d"))
    await pubsub.publish(subject, b"order-1", {"trace": "abc", "kind": "new"})

    msg = await stream.next(timeout=WAIT)

    assert msg.subject == subject
    assert msg.payload == b"order-1"
    assert type(msg.payload) is bytes
    assert msg.headers == {"trace": "abc", "kind": "new"}
    assert isinstance(msg.seq, int)
    assert msg.delivery_count == 1
    await msg.ack()


async def test_publish_without_headers_delivers_empty_headers(world: World):
    pubsub, *_ = await world.connect()
    subject = world.subject("plain")
    stream = await pubsub.subscribe(subject, world.name("d"))
    await pubsub.publish(subject, b"x")

    msg = await stream.next(timeout=WAIT)

    assert msg.headers == {}
    await msg.ack()


@pytest.mark.parametrize(
    "payload",
    [bytearray(b"bytes-like"), memoryview(b"bytes-like"), memoryview(b"xxbytes-likexx")[2:-2]],
    ids=["bytearray", "memoryview", "memoryview-slice"],
)
async def test_publish_accepts_bytes_like_payloads_and_delivers_bytes(world: World, payload):
    pubsub, *_ = await world.connect()
    subject = world.subject("bytes")
    stream = await pubsub.subscribe(subject, world.name("d"))
    await pubsub.publish(subject, payload)

    msg = await stream.next(timeout=WAIT)

    assert msg.payload == b"bytes-like"
    assert type(msg.payload) is bytes
    await msg.ack()


async def test_empty_payload_is_delivered(world: World):
    pubsub, *_ = await world.connect()
    subject = world.subject("empty")
    stream = await pubsub.subscribe(subject, world.name("d"))
    await pubsub.publish(subject, b"")

    msg = await stream.next(timeout=WAIT)

    assert msg.payload == b""
    await msg.ack()


async def test_seq_increases_with_each_published_message(world: World):
    pubsub, *_ = await world.connect()
    subject = world.subject("seq")
    stream = await pubsub.subscribe(subject, world.name("d"))
    for i in range(5):
        await pubsub.publish(subject, b"%d" % i)

    seqs = {}
    for _ in range(5):
        msg = await stream.next(timeout=WAIT)
        seqs[msg.payload] = msg.seq
        await msg.ack()

    assert [seqs[b"%d" % i] for i in range(5)] == sorted(set(seqs.values()))


async def test_async_iteration_yields_messages(world: World):
    pubsub, *_ = await world.connect()
    subject = world.subject("iter")
    stream = await pubsub.subscribe(subject, world.name("d"))
    await pubsub.publish(subject, b"a")
    await pubsub.publish(subject, b"b")

    got = []
    async for msg in stream:
        got.append(msg.payload)
        await msg.ack()
        if len(got) == 2:
            break

    assert sorted(got) == [b"a", b"b"]


async def test_star_wildcard_matches_exactly_one_token(world: World):
    pubsub, *_ = await world.connect()
    stream = await pubsub.subscribe(world.subject("orders.*"), world.name("d"))
    await pubsub.publish(world.subject("orders"), b"too-short")
    await pubsub.publish(world.subject("orders.eu"), b"one-token")
    await pubsub.publish(world.subject("orders.eu.created"), b"two-tokens")
    await pubsub.publish(world.subject("other.eu"), b"other")

    got = await drain(stream)

    assert [m.payload for m in got] == [b"one-token"]


async def test_star_wildcard_matches_a_middle_token(world: World):
    pubsub, *_ = await world.connect()
    stream = await pubsub.subscribe(world.subject("orders.*.created"), world.name("d"))
    await pubsub.publish(world.subject("orders.eu.created"), b"eu")
    await pubsub.publish(world.subject("orders.us.created"), b"us")
    await pubsub.publish(world.subject("orders.eu.deleted"), b"deleted")

    got = await drain(stream)

    assert sorted(m.payload for m in got) == [b"eu", b"us"]


async def test_greater_than_wildcard_matches_one_or_more_remaining_tokens(world: World):
    pubsub, *_ = await world.connect()
    stream = await pubsub.subscribe(world.subject("orders.>"), world.name("d"))
    await pubsub.publish(world.subject("orders"), b"zero-tokens")
    await pubsub.publish(world.subject("orders.eu"), b"one")
    await pubsub.publish(world.subject("orders.eu.created.today"), b"three")
    await pubsub.publish(world.subject("other.eu"), b"other")

    got = await drain(stream)

    assert sorted(m.payload for m in got) == [b"one", b"three"]
    assert {m.subject for m in got} == {
        world.subject("orders.eu"),
        world.subject("orders.eu.created.today"),
    }


async def test_each_durable_gets_its_own_copy_of_every_message(world: World):
    pubsub, *_ = await world.connect()
    subject = world.subject("fanout")
    first = await pubsub.subscribe(subject, world.name("first"))
    second = await pubsub.subscribe(subject, world.name("second"))
    await pubsub.publish(subject, b"a")
    await pubsub.publish(subject, b"b")

    assert sorted(m.payload for m in await drain(first)) == [b"a", b"b"]
    assert sorted(m.payload for m in await drain(second)) == [b"a", b"b"]


async def test_publish_with_no_matching_durable_succeeds(world: World):
    pubsub, *_ = await world.connect()

    await pubsub.publish(world.subject("nobody.listens"), b"x")


async def test_message_published_before_a_durable_exists_is_not_delivered_to_it(world: World):
    pubsub, *_ = await world.connect()
    subject = world.subject("early")
    await pubsub.publish(subject, b"before")

    stream = await pubsub.subscribe(subject, world.name("late"))
    await pubsub.publish(subject, b"after")

    assert [m.payload for m in await drain(stream)] == [b"after"]


async def test_message_matching_no_durable_is_not_kept_for_a_durable_made_later(world: World):
    pubsub, *_ = await world.connect()
    # A durable on another subject exists, so the bus is storing *something*.
    await pubsub.subscribe(world.subject("elsewhere"), world.name("other"))
    await pubsub.publish(world.subject("unmatched"), b"lost")

    stream = await pubsub.subscribe(world.subject(">"), world.name("later"))

    with pytest.raises(klieo_shm.Timeout):
        await stream.next(timeout=NOTHING)


async def test_payload_over_the_limit_raises_payload_too_large_with_size_and_limit(world: World):
    pubsub, *_ = await world.connect()
    subject = world.subject("big")
    stream = await pubsub.subscribe(subject, world.name("d"))
    limit = world.backend.max_payload

    with pytest.raises(klieo_shm.PayloadTooLarge) as caught:
        await pubsub.publish(subject, b"x" * (limit + 1))

    assert caught.value.size == limit + 1
    assert caught.value.limit == limit
    with pytest.raises(klieo_shm.Timeout):
        await stream.next(timeout=NOTHING)


async def test_payload_at_the_limit_is_delivered(world: World):
    pubsub, *_ = await world.connect()
    subject = world.subject("big")
    stream = await pubsub.subscribe(subject, world.name("d"))
    payload = bytes(range(256)) * (world.backend.max_payload // 256)
    payload += b"z" * (world.backend.max_payload - len(payload))

    await pubsub.publish(subject, payload)
    msg = await stream.next(timeout=WAIT)

    assert msg.payload == payload
    await msg.ack()


async def test_publisher_and_subscriber_on_different_buses(world: World):
    producer, *_ = await world.connect()
    consumer, *_ = await world.connect()
    subject = world.subject("across")
    stream = await consumer.subscribe(subject, world.name("d"))

    await producer.publish(subject, b"hello")
    msg = await stream.next(timeout=WAIT)

    assert msg.payload == b"hello"
    await msg.ack()
