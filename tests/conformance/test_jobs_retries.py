"""Jobs: a claim that ends without an ack — nak, lease expiry, the worker's
bus closing — puts the job back with its attempt counted; fencing keeps an
expired worker from touching the job after someone else took it."""

from __future__ import annotations

import asyncio
import time

import pytest

import klieo_shm
from klieo_shm import Job

from .world import WAIT, World, at_once

TTL = 30.0
SHORT_TTL = 0.3


async def _claim_soon(jobs, queue: str, worker: str = "w", ttl: float = TTL, within=WAIT):
    """The next claim that returns a job within ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        claimed = await jobs.claim(queue, worker, ttl)
        if claimed is not None:
            return claimed
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(f"no job in {queue!r} within {within} s")


async def test_nak_requeues_with_the_next_attempt(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    job_id = await jobs.enqueue(queue, Job(b"retry"))
    first = await jobs.claim(queue, "w", TTL)

    await first.nak()
    second = await _claim_soon(jobs, queue)

    assert (second.id, second.payload, second.attempt) == (job_id, b"retry", 2)
    await second.ack()


async def test_nak_with_delay_requeues_after_the_delay_and_not_before(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    await jobs.enqueue(queue, Job(b"retry"))
    first = await jobs.claim(queue, "w", TTL)
    delay = 1.5

    naked_at = time.monotonic()
    await first.nak(delay=delay)
    stats = await jobs.stats(queue)
    second = await _claim_soon(jobs, queue)

    assert time.monotonic() - naked_at >= delay - 0.05
    assert (stats.ready, stats.delayed, stats.claimed) == (0, 1, 0)
    assert (second.id, second.attempt) == (first.id, 2)
    await second.ack()


async def test_lease_expiry_requeues_with_the_next_attempt(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    job_id = await jobs.enqueue(queue, Job(b"stuck"))
    await jobs.claim(queue, "slow", SHORT_TTL)

    second = await _claim_soon(jobs, queue, "fast")

    assert (second.id, second.payload, second.attempt) == (job_id, b"stuck", 2)
    await second.ack()


async def test_claimers_bus_closing_requeues_the_job_at_once(world: World):
    worker_bus = await world.connect()
    *_, other = await world.connect()
    queue = world.name("q")
    job_id = await other.enqueue(queue, Job(b"orphan"))
    assert (await worker_bus.jobs.claim(queue, "dies", TTL)).id == job_id

    await worker_bus.close()
    second = await at_once(_claim_soon(other, queue, "takes-over"))

    assert (second.id, second.attempt) == (job_id, 2)
    await second.ack()


async def test_heartbeat_keeps_a_claim_past_its_ttl(world: World):
    *_, jobs = await world.connect()
    *_, rival = await world.connect()
    queue = world.name("q")
    await jobs.enqueue(queue, Job(b"long"))
    claimed = await jobs.claim(queue, "w", 1.0)
    rival_claim = asyncio.ensure_future(_claim_soon(rival, queue, "rival", within=2.5))

    while not rival_claim.done():  # over two TTLs, until the rival gives up
        await asyncio.sleep(0.25)
        await claimed.heartbeat()

    with pytest.raises(AssertionError, match="no job"):
        await rival_claim
    await claimed.ack()


async def test_ack_after_expiry_and_takeover_raises_conflict(world: World):
    *_, slow = await world.connect()
    *_, fast = await world.connect()
    queue = world.name("q")
    await slow.enqueue(queue, Job(b"contested"))
    old = await slow.claim(queue, "slow", SHORT_TTL)
    new = await _claim_soon(fast, queue, "fast")

    with pytest.raises(klieo_shm.Conflict) as caught:
        await old.ack()

    assert new.token > old.token
    assert caught.value.expected == old.token
    assert caught.value.current == new.token
    stats = await fast.stats(queue)
    assert (stats.ready, stats.claimed) == (0, 1)  # still the taker's
    await new.ack()


@pytest.mark.parametrize("late", ["heartbeat", "nak", "dead_letter"])
async def test_other_operations_after_expiry_and_takeover_raise_conflict(world: World, late):
    *_, slow = await world.connect()
    *_, fast = await world.connect()
    queue = world.name("q")
    await slow.enqueue(queue, Job(b"contested"))
    old = await slow.claim(queue, "slow", SHORT_TTL)
    new = await _claim_soon(fast, queue, "fast")
    operation = {
        "heartbeat": lambda: old.heartbeat(),
        "nak": lambda: old.nak(),
        "dead_letter": lambda: old.dead_letter("late"),
    }[late]

    with pytest.raises(klieo_shm.Conflict):
        await operation()

    assert await fast.dead_letters(queue) == []
    assert await fast.claim(queue, "third", TTL) is None
    await new.ack()
    assert await fast.claim(queue, "third", TTL) is None


async def test_claim_tokens_increase_with_each_claim_of_a_job(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    await jobs.enqueue(queue, Job(b"x"))
    tokens = []
    for _ in range(3):
        claimed = await _claim_soon(jobs, queue)
        tokens.append(claimed.token)
        await claimed.nak()

    assert tokens == sorted(set(tokens))
