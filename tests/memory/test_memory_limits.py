"""Backpressure and waiting in the memory backend: Full, max_ack_pending,
claim_wait, and cancelled waits that lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

import klieo_shm
from klieo_shm import Job


def _url(query: str = "") -> str:
    return f"memory://mem-{uuid.uuid4().hex[:10]}{query}"


async def test_publish_waits_for_room_then_raises_full() -> None:
    bus = await klieo_shm.connect(_url("?max_pending=2&publish_timeout=0.1"))
    await bus.pubsub.subscribe("a", "d")
    await bus.pubsub.publish("a", b"1")
    await bus.pubsub.publish("a", b"2")

    with pytest.raises(klieo_shm.Full) as caught:
        await bus.pubsub.publish("a", b"3")
    assert caught.value.limit == 2
    await bus.close()


async def test_publish_waiting_for_room_goes_on_when_a_message_is_acked() -> None:
    bus = await klieo_shm.connect(_url("?max_pending=1&publish_timeout=5"))
    stream = await bus.pubsub.subscribe("a", "d")
    await bus.pubsub.publish("a", b"1")
    blocked = asyncio.create_task(bus.pubsub.publish("a", b"2"))
    await asyncio.sleep(0.05)
    assert not blocked.done()

    msg = await stream.next(timeout=5.0)
    assert msg is not None
    await msg.ack()
    await asyncio.wait_for(blocked, 5.0)
    await bus.close()


async def test_publish_matching_no_durable_never_waits() -> None:
    bus = await klieo_shm.connect(_url("?max_pending=1&publish_timeout=5"))
    await bus.pubsub.subscribe("a", "d")
    await bus.pubsub.publish("a", b"1")

    await asyncio.wait_for(bus.pubsub.publish("elsewhere", b"x"), 1.0)
    await bus.close()


async def test_max_ack_pending_bounds_deliveries_in_flight() -> None:
    bus = await klieo_shm.connect(_url("?max_ack_pending=2"))
    stream = await bus.pubsub.subscribe("a", "d")
    for i in range(3):
        await bus.pubsub.publish("a", b"%d" % i)
    first = await stream.next(timeout=5.0)
    await stream.next(timeout=5.0)

    with pytest.raises(klieo_shm.Timeout):
        await stream.next(timeout=0.1)
    assert first is not None
    await first.ack()
    third = await stream.next(timeout=5.0)
    assert third is not None
    assert third.payload == b"2"
    await bus.close()


async def test_cancelled_next_loses_no_message() -> None:
    bus = await klieo_shm.connect(_url())
    stream = await bus.pubsub.subscribe("a", "d")
    waiting = asyncio.create_task(stream.next())
    await asyncio.sleep(0.01)
    await bus.pubsub.publish("a", b"x")
    waiting.cancel()
    got = None
    with contextlib.suppress(asyncio.CancelledError):
        got = await waiting
    if got is None:
        got = await stream.next(timeout=1.0)  # not held by the cancelled call

    assert got is not None
    assert got.delivery_count == 1
    await bus.close()


async def test_claim_waits_as_long_as_claim_wait() -> None:
    bus = await klieo_shm.connect(_url("?claim_wait=0.1"))
    start = time.monotonic()

    assert await bus.jobs.claim("q", "w", 30.0) is None
    assert time.monotonic() - start < 1.0
    await bus.close()


async def test_enqueue_over_max_jobs_raises_full() -> None:
    bus = await klieo_shm.connect(_url("?max_jobs=1&publish_timeout=0.05"))
    await bus.jobs.enqueue("q", Job(b"1"))

    with pytest.raises(klieo_shm.Full):
        await bus.jobs.enqueue("q", Job(b"2"))
    await bus.close()


async def test_dead_letter_headers_name_the_job() -> None:
    bus = await klieo_shm.connect(_url())
    stream = await bus.pubsub.subscribe("dlq.q", "dead")
    job_id = await bus.jobs.enqueue("q", Job(b"p", max_attempts=1))
    claimed = await bus.jobs.claim("q", "w", 30.0)
    assert claimed is not None
    await claimed.nak()

    msg = await stream.next(timeout=5.0)
    assert msg is not None
    assert msg.payload == b"p"
    assert msg.headers == {
        "job-id": job_id,
        "queue": "q",
        "attempts": "1",
        "reason": "max attempts (1) reached after nak",
    }
    await bus.close()
