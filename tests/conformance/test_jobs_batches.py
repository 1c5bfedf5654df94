"""Jobs in batches: ``claim_many`` hands out claims of their own (token,
lease, resolution); ``ack_many`` acks a batch all or nothing on bad input and
acks what it can when a claim was lost."""

from __future__ import annotations

import asyncio

import pytest

import klieo_shm
from klieo_shm import Job

from .world import WAIT, World

TTL = 30.0
SHORT_TTL = 0.3


async def _claim_all(jobs, queue: str, count: int, max_jobs: int) -> list:
    """Batches of ``claim_many`` until ``count`` jobs are claimed."""
    got: list = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            batch = await jobs.claim_many(queue, "w", TTL, max_jobs)
            assert len(batch) <= max_jobs
            got.extend(batch)
    return got


async def test_claim_many_hands_out_each_job_once_with_its_own_token(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    sent = {await jobs.enqueue(queue, Job(b"%d" % i)): b"%d" % i for i in range(12)}

    got = await _claim_all(jobs, queue, 12, 5)

    assert {job.id: job.payload for job in got} == sent
    assert len({job.token for job in got}) == 12
    assert {job.attempt for job in got} == {1}
    assert {job.queue for job in got} == {queue}
    assert await jobs.claim_many(queue, "w", TTL, 5) == []
    await jobs.ack_many(got)


async def test_claim_many_on_an_empty_queue_returns_an_empty_list(world: World):
    *_, jobs = await world.connect()

    got = await asyncio.wait_for(jobs.claim_many(world.name("q"), "w", TTL, 10), WAIT)

    assert got == []


async def test_claim_many_waiting_on_an_empty_queue_gets_a_job_enqueued_meanwhile(
    world: World,
):
    *_, worker = await world.connect()
    *_, producer = await world.connect()
    queue = world.name("q")
    claiming = asyncio.ensure_future(worker.claim_many(queue, "w", TTL, 10))
    await asyncio.sleep(0.2)  # the claim is waiting now: that is the case under test

    job_id = await producer.enqueue(queue, Job(b"late"))

    got = await asyncio.wait_for(claiming, WAIT)
    assert [job.id for job in got] == [job_id]
    await worker.ack_many(got)


async def test_claim_many_with_fewer_ready_than_asked_returns_those_without_waiting(
    world: World,
):
    *_, jobs = await world.connect()
    queue = world.name("q")
    job_id = await jobs.enqueue(queue, Job(b"only"))

    # a short lease: a batch that waited for more would see it expire and the
    # job come back into the same batch
    got = await asyncio.wait_for(jobs.claim_many(queue, "w", 1.0, 10), WAIT)

    assert [job.id for job in got] == [job_id]
    await jobs.ack_many(got)


async def test_claims_of_a_batch_resolve_one_by_one(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    for i in range(3):
        await jobs.enqueue(queue, Job(b"%d" % i))
    done, retried, buried = await _claim_all(jobs, queue, 3, 3)

    await done.ack()
    await retried.nak()
    await buried.dead_letter("bad")

    again = await _claim_all(jobs, queue, 1, 3)
    assert [(job.id, job.attempt) for job in again] == [(retried.id, 2)]
    assert [d.id for d in await jobs.dead_letters(queue)] == [buried.id]
    await jobs.ack_many(again)


async def test_ack_many_removes_every_job(world: World):
    *_, jobs = await world.connect()
    *_, other = await world.connect()
    queue = world.name("q")
    for i in range(10):
        await jobs.enqueue(queue, Job(b"%d" % i))
    got = await _claim_all(jobs, queue, 10, 10)

    await jobs.ack_many(got)

    stats = await jobs.stats(queue)  # the same bus: after its acks
    assert (stats.ready, stats.delayed, stats.claimed, stats.dead) == (0, 0, 0, 0)
    assert all(job.resolved for job in got)
    assert await other.claim_many(queue, "w2", TTL, 10) == []


async def test_ack_many_of_nothing_does_nothing(world: World):
    *_, jobs = await world.connect()

    await jobs.ack_many([])


async def test_ack_many_acks_single_claims_too(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    await jobs.enqueue(queue, Job(b"one"))
    claimed = await jobs.claim(queue, "w", TTL)

    await jobs.ack_many([claimed])

    stats = await jobs.stats(queue)
    assert (stats.ready, stats.claimed) == (0, 0)


@pytest.mark.parametrize("bad", ["resolved", "twice"])
async def test_ack_many_with_a_resolved_or_repeated_job_acks_none(world: World, bad: str):
    *_, jobs = await world.connect()
    queue = world.name("q")
    for i in range(3):
        await jobs.enqueue(queue, Job(b"%d" % i))
    one, two, three = await _claim_all(jobs, queue, 3, 3)
    if bad == "resolved":
        await one.nak(30.0)
        batch = [two, one, three]
    else:
        batch = [two, three, two]

    with pytest.raises(klieo_shm.AlreadyAcknowledged):
        await jobs.ack_many(batch)

    stats = await jobs.stats(queue)
    assert stats.claimed == (2 if bad == "resolved" else 3)
    await two.ack()  # still open: ack_many marked none of them
    await three.ack()


async def test_ack_many_acks_the_others_when_one_claim_was_lost(world: World):
    *_, slow = await world.connect()
    *_, fast = await world.connect()
    queue = world.name("q")
    contested = await slow.enqueue(queue, Job(b"contested"))
    old = await slow.claim(queue, "slow", SHORT_TTL)
    async with asyncio.timeout(WAIT):
        while (new := await fast.claim(queue, "fast", TTL)) is None:
            pass
    await slow.enqueue(queue, Job(b"kept"))
    kept = await _claim_all(slow, queue, 1, 5)

    with pytest.raises(klieo_shm.Conflict) as caught:
        await slow.ack_many([old, *kept])

    assert new.id == contested
    assert caught.value.expected == old.token
    assert caught.value.current == new.token
    stats = await slow.stats(queue)  # the bus of the acks
    assert (stats.ready, stats.claimed) == (0, 1)  # the taker's claim, not the kept job
    await new.ack()


@pytest.mark.parametrize("max_jobs", [0, -1, 1.5, "2", True, None])
async def test_claim_many_refuses_a_bad_max_jobs(world: World, max_jobs):
    *_, jobs = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument):
        await jobs.claim_many(world.name("q"), "w", TTL, max_jobs)


async def test_ack_many_refuses_what_is_not_a_claimed_job(world: World):
    *_, jobs = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument):
        await jobs.ack_many(["not a job"])


async def test_claim_many_takes_up_to_max_jobs_of_the_ready_ones_at_once(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    for i in range(20):
        await jobs.enqueue(queue, Job(b"%d" % i))

    first = await jobs.claim_many(queue, "w", TTL, 8)
    rest = await jobs.claim_many(queue, "w", TTL, 50)

    assert (len(first), len(rest)) == (8, 12)
    await jobs.ack_many(first + rest)


async def test_ack_many_on_a_closed_bus_raises_closed(world: World):
    bus = await world.connect()
    queue = world.name("q")
    for i in range(2):
        await bus.jobs.enqueue(queue, Job(b"%d" % i))
    got = await _claim_all(bus.jobs, queue, 2, 2)
    await bus.close()

    with pytest.raises(klieo_shm.Closed):
        await bus.jobs.ack_many(got)
