"""KV: compare-and-set."""

from __future__ import annotations

import asyncio

import pytest

import klieo_shm

from .world import World


async def test_cas_none_on_an_absent_key_creates_it(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")

    rev = await kv.cas(bucket, "k", b"v", None)

    assert await kv.get(bucket, "k") == klieo_shm.KvEntry(b"v", rev)


async def test_cas_none_on_a_present_key_raises_conflict_with_current_revision(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    rev = await kv.put(bucket, "k", b"v")

    with pytest.raises(klieo_shm.Conflict) as caught:
        await kv.cas(bucket, "k", b"other", None)

    assert caught.value.expected is None
    assert caught.value.current == rev
    assert await kv.get(bucket, "k") == klieo_shm.KvEntry(b"v", rev)


async def test_cas_with_the_current_revision_writes_and_returns_a_higher_revision(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    rev = await kv.put(bucket, "k", b"1")

    new = await kv.cas(bucket, "k", b"2", rev)

    assert new > rev
    assert await kv.get(bucket, "k") == klieo_shm.KvEntry(b"2", new)


async def test_cas_with_stale_revision_raises_conflict(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    stale = await kv.put(bucket, "k", b"1")
    current = await kv.put(bucket, "k", b"2")

    with pytest.raises(klieo_shm.Conflict) as caught:
        await kv.cas(bucket, "k", b"3", stale)

    assert caught.value.expected == stale
    assert caught.value.current == current
    assert await kv.get(bucket, "k") == klieo_shm.KvEntry(b"2", current)


async def test_cas_expecting_the_revision_of_another_key_raises_conflict(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    mine = await kv.put(bucket, "mine", b"v")
    await kv.put(bucket, "other", b"v")

    with pytest.raises(klieo_shm.Conflict) as caught:
        await kv.cas(bucket, "other", b"x", mine)

    assert caught.value.current != mine


async def test_cas_with_a_revision_on_an_absent_key_raises_conflict_with_current_none(
    world: World,
):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    await kv.put(bucket, "elsewhere", b"v")

    with pytest.raises(klieo_shm.Conflict) as caught:
        await kv.cas(bucket, "k", b"v", 1)

    assert caught.value.expected == 1
    assert caught.value.current is None
    assert await kv.get(bucket, "k") is None


async def test_deleted_key_is_absent_for_cas_none(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    await kv.put(bucket, "k", b"old")
    await kv.delete(bucket, "k")

    rev = await kv.cas(bucket, "k", b"new", None)

    assert await kv.get(bucket, "k") == klieo_shm.KvEntry(b"new", rev)


async def test_cas_with_the_revision_before_a_delete_raises_conflict(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    rev = await kv.put(bucket, "k", b"v")
    await kv.delete(bucket, "k")

    with pytest.raises(klieo_shm.Conflict) as caught:
        await kv.cas(bucket, "k", b"again", rev)

    assert caught.value.current is None


async def test_cas_is_a_write_counted_in_the_bucket_revision(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    created = await kv.cas(bucket, "a", b"v", None)

    assert created == 1
    assert await kv.put(bucket, "b", b"v") > created


async def test_only_one_of_concurrent_cas_on_the_same_revision_wins(world: World):
    buses = [await world.connect() for _ in range(4)]
    bucket = world.name("b")
    rev = await buses[0].kv.put(bucket, "counter", b"0")

    async def attempt(i: int):
        try:
            return await buses[i].kv.cas(bucket, "counter", b"%d" % i, rev)
        except klieo_shm.Conflict as exc:
            return exc

    results = await asyncio.gather(*(attempt(i) for i in range(4)))

    winners = [r for r in results if not isinstance(r, klieo_shm.Conflict)]
    assert len(winners) == 1
    assert all(r.current == winners[0] for r in results if isinstance(r, klieo_shm.Conflict))
    assert (await buses[0].kv.get(bucket, "counter")).revision == winners[0]
