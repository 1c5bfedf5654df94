"""Where the NATS backend keeps things: subjects under the bus prefix,
nothing stored that no durable wants, prefixes isolated from each other."""

from __future__ import annotations

import asyncio

import nats
import pytest

import klieo_shm


async def test_pubsub_subjects_are_published_under_the_prefix(
    url: str, nats_server_url: str, prefix
):
    raw = await nats.connect(nats_server_url)
    seen: asyncio.Queue[str] = asyncio.Queue()

    async def record(msg) -> None:
        await seen.put(msg.subject)

    await raw.subscribe(f"{prefix}.ps.>", cb=record)
    await raw.flush()
    async with await klieo_shm.connect(url) as bus:
        await bus.pubsub.publish("orders.eu", b"x")

        assert await asyncio.wait_for(seen.get(), 5) == f"{prefix}.ps.orders.eu"
    await raw.close()


async def test_a_message_no_durable_matches_is_not_stored(url: str, nats_server_url: str, prefix):
    async with await klieo_shm.connect(url) as bus:
        await bus.pubsub.subscribe("wanted", "d")
        await bus.pubsub.publish("unwanted", b"x")
        await bus.pubsub.publish("wanted", b"y")

        raw = await nats.connect(nats_server_url)
        info = await raw.jetstream().stream_info(f"{prefix}_pubsub")
        await raw.close()

    assert info.state.messages == 1


async def test_a_durable_on_every_subject_does_not_capture_requests(url: str):
    async with await klieo_shm.connect(url) as bus:
        stream = await bus.pubsub.subscribe(">", "everything")
        await bus.requests.serve("svc.echo", lambda p: p)

        assert await bus.requests.request("svc.echo", b"hi", timeout=5) == b"hi"
        await bus.kv.put("b", "k", b"v")
        with pytest.raises(klieo_shm.Timeout):
            await stream.next(timeout=0.3)


async def test_buses_with_different_prefixes_share_nothing(nats_server_url: str):
    one = await klieo_shm.connect(f"{nats_server_url}?prefix=one-{id(object())}&storage=memory")
    two = await klieo_shm.connect(f"{nats_server_url}?prefix=two-{id(object())}&storage=memory")
    try:
        stream = await two.pubsub.subscribe("x", "d")
        await one.pubsub.publish("x", b"one's")
        await one.kv.put("b", "k", b"one's")

        assert await two.kv.get("b", "k") is None
        with pytest.raises(klieo_shm.Timeout):
            await stream.next(timeout=0.3)
        with pytest.raises(klieo_shm.NotFound):
            await two.requests.request("nobody", b"", timeout=1)
    finally:
        await one.close()
        await two.close()


async def test_dotted_bucket_names_work_and_stay_apart(url: str):
    async with await klieo_shm.connect(url) as bus:
        await bus.kv.put("dedup.orders", "k", b"dotted")
        await bus.kv.put("dedup_orders", "k", b"underscored")

        assert (await bus.kv.get("dedup.orders", "k")).value == b"dotted"
        assert (await bus.kv.get("dedup_orders", "k")).value == b"underscored"
        assert await bus.kv.keys("dedup.orders") == ["k"]


async def test_connecting_to_a_port_nobody_listens_on_raises_closed():
    with pytest.raises(klieo_shm.Closed):
        await asyncio.wait_for(klieo_shm.connect("nats://127.0.0.1:1?connect_timeout=1"), 15)


async def test_a_message_that_looks_like_a_status_message_is_still_delivered(url: str):
    async with await klieo_shm.connect(url) as bus:
        stream = await bus.pubsub.subscribe("s", "d")
        await bus.pubsub.publish("s", b"", {"Status": "408", "Description": "Request Timeout"})

        msg = await stream.next(timeout=5)

        assert (msg.payload, msg.headers) == (
            b"",
            {"Status": "408", "Description": "Request Timeout"},
        )
        await msg.ack()


@pytest.mark.parametrize("headers", [{"Nats-Msg-Id": "1"}, {"a:b": "x"}, {"k": "line\nbreak"}])
async def test_headers_nats_cannot_carry_raise_invalid_argument(url: str, headers):
    async with await klieo_shm.connect(url) as bus:
        with pytest.raises(klieo_shm.InvalidArgument):
            await bus.pubsub.publish("s", b"x", headers)
