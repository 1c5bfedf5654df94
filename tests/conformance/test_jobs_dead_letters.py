"""Jobs: dead letters — after max_attempts or by dead_letter(reason), kept
with payload, attempts and reason, published on dlq.<queue>, requeued or
discarded by an operator."""

from __future__ import annotations

import asyncio
import time

import pytest

import klieo_shm
from klieo_shm import DEFAULT_MAX_ATTEMPTS, Job

from .world import NOTHING, WAIT, World

TTL = 30.0


async def _fail_every_attempt(jobs, queue: str, attempts: int) -> list[int]:
    seen = []
    for _ in range(attempts):
        claimed = await jobs.claim(queue, "w", TTL)
        assert claimed is not None, f"job not claimable after {seen} attempts"
        seen.append(claimed.attempt)
        await claimed.nak()
    return seen


async def test_job_becomes_a_dead_letter_after_max_attempts(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    job_id = await jobs.enqueue(queue, Job(b"poison", max_attempts=3))

    assert await _fail_every_attempt(jobs, queue, 3) == [1, 2, 3]

    assert await jobs.claim(queue, "w", TTL) is None
    [dead] = await jobs.dead_letters(queue)
    assert (dead.id, dead.queue, dead.payload, dead.attempts) == (job_id, queue, b"poison", 3)
    assert isinstance(dead.reason, str)
    assert dead.reason


async def test_default_max_attempts_is_5(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    await jobs.enqueue(queue, Job(b"poison"))

    assert await _fail_every_attempt(jobs, queue, DEFAULT_MAX_ATTEMPTS) == [1, 2, 3, 4, 5]

    assert DEFAULT_MAX_ATTEMPTS == 5
    assert await jobs.claim(queue, "w", TTL) is None
    assert [d.attempts for d in await jobs.dead_letters(queue)] == [5]


async def test_lease_expiries_count_as_attempts_towards_max_attempts(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    job_id = await jobs.enqueue(queue, Job(b"hangs", max_attempts=1))

    assert await jobs.claim(queue, "w", 0.3) is not None

    dead = await _dead_letters_soon(jobs, queue)
    assert [(d.id, d.attempts) for d in dead] == [(job_id, 1)]
    assert await jobs.claim(queue, "w", TTL) is None


async def test_dead_letter_with_reason_moves_the_job_at_once(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    job_id = await jobs.enqueue(queue, Job(b"bad input"))
    claimed = await jobs.claim(queue, "w", TTL)

    await claimed.dead_letter("cannot parse")

    [dead] = await jobs.dead_letters(queue)
    assert (dead.id, dead.payload, dead.attempts, dead.reason) == (
        job_id,
        b"bad input",
        1,
        "cannot parse",
    )
    assert await jobs.claim(queue, "w", TTL) is None


async def test_dead_letters_are_published_on_the_dlq_subject(world: World):
    pubsub, *_, jobs = await world.connect()
    queue = world.name("q")
    dlq = await pubsub.subscribe(f"dlq.{queue}", world.name("dlq"))
    job_id = await jobs.enqueue(queue, Job(b"poison", max_attempts=1))
    await (await jobs.claim(queue, "w", TTL)).dead_letter("broken")

    msg = await dlq.next(timeout=WAIT)

    assert msg.subject == f"dlq.{queue}"
    assert msg.payload == b"poison"
    # What all three backends send; DESIGN.md names only the subject.
    assert msg.headers == {"job-id": job_id, "queue": queue, "attempts": "1", "reason": "broken"}
    await msg.ack()


async def test_dead_letters_from_max_attempts_are_published_on_the_dlq_subject(world: World):
    pubsub, *_, jobs = await world.connect()
    queue = world.name("q")
    dlq = await pubsub.subscribe(f"dlq.{queue}", world.name("dlq"))
    job_id = await jobs.enqueue(queue, Job(b"poison", max_attempts=2))
    await _fail_every_attempt(jobs, queue, 2)

    msg = await dlq.next(timeout=WAIT)

    assert msg.subject == f"dlq.{queue}"
    assert msg.payload == b"poison"
    assert (msg.headers["job-id"], msg.headers["attempts"]) == (job_id, "2")
    await msg.ack()
    with pytest.raises(klieo_shm.Timeout):
        await dlq.next(timeout=NOTHING)


async def test_dead_letters_are_listed_oldest_first(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    order = []
    for i in range(3):
        await jobs.enqueue(queue, Job(b"%d" % i))
        claimed = await jobs.claim(queue, "w", TTL)
        order.append(claimed.id)
        await claimed.dead_letter(f"reason {i}")

    assert [d.id for d in await jobs.dead_letters(queue)] == order


async def test_requeue_puts_a_dead_letter_back_with_attempts_reset(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    job_id = await jobs.enqueue(queue, Job(b"second chance", max_attempts=2))
    await _fail_every_attempt(jobs, queue, 2)

    await jobs.requeue(queue, job_id)

    assert await jobs.dead_letters(queue) == []
    claimed = await jobs.claim(queue, "w", TTL)
    assert (claimed.id, claimed.payload, claimed.attempt) == (job_id, b"second chance", 1)
    await claimed.ack()


async def test_discard_removes_a_dead_letter_for_good(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    job_id = await jobs.enqueue(queue, Job(b"junk"))
    await (await jobs.claim(queue, "w", TTL)).dead_letter("junk")

    await jobs.discard(queue, job_id)

    assert await jobs.dead_letters(queue) == []
    assert await jobs.claim(queue, "w", TTL) is None
    with pytest.raises(klieo_shm.NotFound):
        await jobs.requeue(queue, job_id)


@pytest.mark.parametrize("operation", ["requeue", "discard"])
async def test_requeue_or_discard_of_an_unknown_dead_letter_raises_not_found(
    world: World, operation: str
):
    *_, jobs = await world.connect()
    queue = world.name("q")

    with pytest.raises(klieo_shm.NotFound) as caught:
        await getattr(jobs, operation)(queue, "no-such-job")

    assert caught.value.name == "no-such-job"


async def test_requeue_of_a_live_job_raises_not_found(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    job_id = await jobs.enqueue(queue, Job(b"alive"))

    with pytest.raises(klieo_shm.NotFound):
        await jobs.requeue(queue, job_id)


async def test_dead_letters_of_an_unknown_queue_is_empty(world: World):
    *_, jobs = await world.connect()

    assert await jobs.dead_letters(world.name("never")) == []


async def _dead_letters_soon(jobs, queue: str):
    """The dead letters, once there are some (a TTL must run out first)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        dead = await jobs.dead_letters(queue)
        if dead:
            return dead
        # past max_attempts the job must not come back; a claim also waits a bit
        assert await jobs.claim(queue, "w", 0.1) is None
        await asyncio.sleep(0.05)
    raise AssertionError(f"no dead letter in {queue!r} within {WAIT} s")
