"""JobQueue details particular to NATS: dead letters announced on
``dlq.<queue>``, and claim records fencing a worker whose keep-alive stalled."""

from __future__ import annotations

import asyncio

import pytest

import klieo_shm
from klieo_shm import Job


async def test_dead_letter_is_announced_on_the_dlq_subject(url: str):
    async with await klieo_shm.connect(url) as bus:
        announcements = await bus.pubsub.subscribe("dlq.orders.eu", "watcher")
        job_id = await bus.jobs.enqueue("orders.eu", Job(b"poison"))
        claimed = await bus.jobs.claim("orders.eu", "w", 30.0)
        await claimed.dead_letter("cannot parse\nline two")

        msg = await announcements.next(timeout=5)

        assert msg.payload == b"poison"
        assert msg.headers["job-id"] == job_id
        assert msg.headers["attempts"] == "1"
        assert msg.headers["reason"] == "cannot parse line two"
        await msg.ack()
        [letter] = await bus.jobs.dead_letters("orders.eu")
        assert letter.reason == "cannot parse\nline two"


async def test_dead_letters_of_queue_a_are_not_those_of_queue_a_b(url: str):
    async with await klieo_shm.connect(url) as bus:
        for queue in ("a", "a.b"):
            await bus.jobs.enqueue(queue, Job(queue.encode()))
            await (await bus.jobs.claim(queue, "w", 30.0)).dead_letter("x")

        assert [d.payload for d in await bus.jobs.dead_letters("a")] == [b"a"]
        assert [d.payload for d in await bus.jobs.dead_letters("a.b")] == [b"a.b"]


async def test_ack_after_a_stalled_keep_alive_and_takeover_raises_conflict(url: str):
    slow_bus = await klieo_shm.connect(f"{url}&job_ack_wait=0.5")
    fast_bus = await klieo_shm.connect(f"{url}&job_ack_wait=0.5")
    try:
        await slow_bus.jobs.enqueue("q", Job(b"contested"))
        old = await slow_bus.jobs.claim("q", "slow", 30.0)
        old._impl._stop()  # a frozen worker: no keep-alive, its deadline not yet reached
        new = None
        while new is None:
            new = await fast_bus.jobs.claim("q", "fast", 30.0)

        with pytest.raises(klieo_shm.Conflict) as caught:
            await old.ack()

        assert (caught.value.expected, caught.value.current) == (old.token, new.token)
        stats = await fast_bus.jobs.stats("q")
        assert (stats.ready, stats.claimed) == (0, 1)
        await new.ack()
    finally:
        await slow_bus.close()
        await fast_bus.close()


async def test_a_long_claim_is_kept_alive_past_job_ack_wait(url: str):
    async with await klieo_shm.connect(f"{url}&job_ack_wait=0.3") as bus:
        await bus.jobs.enqueue("q", Job(b"long"))
        claimed = await bus.jobs.claim("q", "w", 30.0)

        await asyncio.sleep(1.5)  # five server-side ack_waits

        assert await bus.jobs.claim("q", "other", 30.0) is None
        await claimed.ack()
