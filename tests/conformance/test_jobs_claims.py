"""Jobs: enqueue, claim, ack, exactly-once resolution, competing workers, stats."""

from __future__ import annotations

import asyncio

import pytest

import klieo_shm
from klieo_shm import Job

from .world import WAIT, World

TTL = 30.0


async def test_enqueue_returns_a_str_id(world: World):
    *_, jobs = await world.connect()

    job_id = await jobs.enqueue(world.name("q"), Job(b"work"))

    assert isinstance(job_id, str)
    assert job_id


async def test_enqueue_returns_distinct_ids(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")

    ids = [await jobs.enqueue(queue, Job(b"same")) for _ in range(10)]

    assert len(set(ids)) == 10


async def test_claim_returns_the_job_with_id_payload_and_attempt_1(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    job_id = await jobs.enqueue(queue, Job(b"work"))

    claimed = await jobs.claim(queue, "worker-1", TTL)

    assert claimed is not None
    assert claimed.id == job_id
    assert claimed.payload == b"work"
    assert type(claimed.payload) is bytes
    assert claimed.attempt == 1
    assert claimed.queue == queue
    assert isinstance(claimed.token, int)
    await claimed.ack()


@pytest.mark.parametrize(
    "payload", [bytearray(b"job"), memoryview(b"job")], ids=["bytearray", "memoryview"]
)
async def test_enqueue_accepts_bytes_like_payloads(world: World, payload):
    *_, jobs = await world.connect()
    queue = world.name("q")
    await jobs.enqueue(queue, Job(payload))

    claimed = await jobs.claim(queue, "w", TTL)

    assert claimed.payload == b"job"
    await claimed.ack()


async def test_claim_on_an_empty_queue_returns_none_within_a_bounded_wait(world: World):
    *_, jobs = await world.connect()

    claimed = await asyncio.wait_for(jobs.claim(world.name("q"), "w", TTL), WAIT)

    assert claimed is None


async def test_claim_waiting_on_an_empty_queue_gets_a_job_enqueued_meanwhile(world: World):
    *_, worker = await world.connect()
    *_, producer = await world.connect()
    queue = world.name("q")
    claiming = asyncio.ensure_future(worker.claim(queue, "w", TTL))
    await asyncio.sleep(0.2)  # the claim is waiting now: that is the case under test

    job_id = await producer.enqueue(queue, Job(b"late"))
    claimed = await asyncio.wait_for(claiming, WAIT)

    assert claimed is not None, "a waiting claim was not woken by the enqueue"
    assert claimed.id == job_id
    await claimed.ack()


async def test_acked_job_is_gone(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    await jobs.enqueue(queue, Job(b"once"))
    claimed = await jobs.claim(queue, "w", 0.5)

    await claimed.ack()

    await asyncio.sleep(1.0)  # past the claim's TTL: an acked job must not come back
    assert await jobs.claim(queue, "w", TTL) is None
    stats = await jobs.stats(queue)
    assert (stats.ready, stats.delayed, stats.claimed, stats.dead) == (0, 0, 0, 0)


async def test_claimed_job_is_not_given_to_another_worker(world: World):
    *_, one = await world.connect()
    *_, two = await world.connect()
    queue = world.name("q")
    await one.enqueue(queue, Job(b"only"))
    claimed = await one.claim(queue, "w1", TTL)

    assert await two.claim(queue, "w2", TTL) is None
    await claimed.ack()


async def test_competing_workers_each_get_distinct_jobs(world: World):
    *_, producer = await world.connect()
    workers = [(await world.connect()).jobs for _ in range(3)]
    queue = world.name("q")
    sent = {await producer.enqueue(queue, Job(b"%d" % i)) for i in range(30)}

    async def work(jobs, name: str) -> list[str]:
        done = []
        while (claimed := await jobs.claim(queue, name, TTL)) is not None:
            done.append(claimed.id)
            await claimed.ack()
        return done

    results = await asyncio.gather(*(work(j, f"w{i}") for i, j in enumerate(workers)))

    all_done = [job_id for done in results for job_id in done]
    assert sorted(all_done) == sorted(sent)


@pytest.mark.parametrize("first", ["ack", "nak", "dead_letter"])
@pytest.mark.parametrize("second", ["ack", "nak", "dead_letter"])
async def test_second_resolution_of_a_claim_raises_already_acknowledged(
    world: World, first: str, second: str
):
    *_, jobs = await world.connect()
    queue = world.name("q")
    await jobs.enqueue(queue, Job(b"x"))
    claimed = await jobs.claim(queue, "w", TTL)
    resolve = {
        "ack": lambda: claimed.ack(),
        "nak": lambda: claimed.nak(5.0),
        "dead_letter": lambda: claimed.dead_letter("because"),
    }
    await resolve[first]()

    with pytest.raises(klieo_shm.AlreadyAcknowledged) as caught:
        await resolve[second]()

    assert caught.value.previous == first


async def test_heartbeat_after_ack_raises_already_acknowledged(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    await jobs.enqueue(queue, Job(b"x"))
    claimed = await jobs.claim(queue, "w", TTL)
    await claimed.ack()

    with pytest.raises(klieo_shm.AlreadyAcknowledged):
        await claimed.heartbeat()


async def test_stats_count_jobs_by_state(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    for i in range(4):
        await jobs.enqueue(queue, Job(b"%d" % i))
    claimed = await jobs.claim(queue, "w", TTL)
    delayed = await jobs.claim(queue, "w", TTL)
    dead = await jobs.claim(queue, "w", TTL)
    await delayed.nak(30.0)
    await dead.dead_letter("bad")

    stats = await jobs.stats(queue)

    assert stats.queue == queue
    assert (stats.ready, stats.delayed, stats.claimed, stats.dead) == (1, 1, 1, 1)
    await claimed.ack()


async def test_stats_of_an_unknown_queue_are_zero(world: World):
    *_, jobs = await world.connect()

    stats = await jobs.stats(world.name("never"))

    assert (stats.ready, stats.delayed, stats.claimed, stats.dead) == (0, 0, 0, 0)


async def test_queues_are_independent(world: World):
    *_, jobs = await world.connect()
    one, two = world.name("one"), world.name("two")
    await jobs.enqueue(one, Job(b"for-one"))

    assert await jobs.claim(two, "w", TTL) is None
    assert (await jobs.claim(one, "w", TTL)).payload == b"for-one"
