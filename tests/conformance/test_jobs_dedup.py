"""Jobs: dedup keys — one job per key, the record kept in KV bucket
``dedup.<queue>``, and Job(max_attempts=...) honoured."""

from __future__ import annotations

from klieo_shm import Job

from .world import World

TTL = 30.0


async def test_enqueue_with_an_existing_dedup_key_returns_the_original_id(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")

    first = await jobs.enqueue(queue, Job(b"one", dedup_key="order-7"))
    second = await jobs.enqueue(queue, Job(b"two", dedup_key="order-7"))

    assert second == first


async def test_enqueue_with_an_existing_dedup_key_enqueues_nothing(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    await jobs.enqueue(queue, Job(b"one", dedup_key="order-7"))
    await jobs.enqueue(queue, Job(b"two", dedup_key="order-7"))

    claimed = await jobs.claim(queue, "w", TTL)

    assert claimed.payload == b"one"
    assert claimed.dedup_key == "order-7"
    assert await jobs.claim(queue, "w", TTL) is None
    stats = await jobs.stats(queue)
    assert (stats.ready, stats.claimed) == (0, 1)
    await claimed.ack()


async def test_dedup_applies_across_buses(world: World):
    *_, one = await world.connect()
    *_, two = await world.connect()
    queue = world.name("q")

    first = await one.enqueue(queue, Job(b"x", dedup_key="k"))

    assert await two.enqueue(queue, Job(b"x", dedup_key="k")) == first


async def test_dedup_key_still_returns_the_original_id_after_the_job_is_acked(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    first = await jobs.enqueue(queue, Job(b"x", dedup_key="once"))
    await (await jobs.claim(queue, "w", TTL)).ack()

    assert await jobs.enqueue(queue, Job(b"x", dedup_key="once")) == first
    assert await jobs.claim(queue, "w", TTL) is None


async def test_different_dedup_keys_give_different_jobs(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")

    a = await jobs.enqueue(queue, Job(b"a", dedup_key="a"))
    b = await jobs.enqueue(queue, Job(b"b", dedup_key="b"))

    assert a != b


async def test_dedup_keys_are_per_queue(world: World):
    *_, jobs = await world.connect()
    one, two = world.name("one"), world.name("two")

    a = await jobs.enqueue(one, Job(b"x", dedup_key="same"))
    b = await jobs.enqueue(two, Job(b"x", dedup_key="same"))

    assert a != b
    assert (await jobs.claim(two, "w", TTL)).id == b


async def test_dedup_record_lives_in_the_kv_bucket_dedup_queue(world: World):
    *_, kv, jobs = await world.connect()
    queue = world.name("q")

    job_id = await jobs.enqueue(queue, Job(b"x", dedup_key="order-7"))

    entry = await kv.get(f"dedup.{queue}", "order-7")
    assert entry is not None
    assert entry.value == job_id.encode()
    assert "order-7" in await kv.keys(f"dedup.{queue}")


async def test_jobs_without_dedup_key_write_no_dedup_record(world: World):
    *_, kv, jobs = await world.connect()
    queue = world.name("q")

    await jobs.enqueue(queue, Job(b"x"))

    assert await kv.keys(f"dedup.{queue}") == []


async def test_job_max_attempts_is_respected(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    job_id = await jobs.enqueue(queue, Job(b"x", max_attempts=2))

    for attempt in (1, 2):
        claimed = await jobs.claim(queue, "w", TTL)
        assert (claimed.id, claimed.attempt) == (job_id, attempt)
        await claimed.nak()

    assert await jobs.claim(queue, "w", TTL) is None
    assert [(d.id, d.attempts) for d in await jobs.dead_letters(queue)] == [(job_id, 2)]


async def test_max_attempts_is_per_job(world: World):
    *_, jobs = await world.connect()
    queue = world.name("q")
    fragile = await jobs.enqueue(queue, Job(b"fragile", max_attempts=1))
    sturdy = await jobs.enqueue(queue, Job(b"sturdy"))
    both = [await jobs.claim(queue, "w", TTL) for _ in range(2)]
    assert {c.id for c in both} == {fragile, sturdy}

    for claimed in both:
        await claimed.nak()

    assert [d.id for d in await jobs.dead_letters(queue)] == [fragile]
    again = await jobs.claim(queue, "w", TTL)
    assert (again.id, again.attempt) == (sturdy, 2)
    await again.ack()
