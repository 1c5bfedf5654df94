"""KV: watch — current values, then live puts and deletes, filtered by pattern."""

from __future__ import annotations

import pytest

import klieo_shm

from .world import NOTHING, WAIT, World


async def _changes(watch, n: int) -> list[tuple[str, str, bytes, int]]:
    got = []
    for _ in range(n):
        change = await watch.next(timeout=WAIT)
        assert change is not None, "watch ended early"
        got.append((change.operation, change.key, change.value, change.revision))
    return got


async def test_watch_yields_current_values_first(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    ra = await kv.put(bucket, "a", b"1")
    rb = await kv.put(bucket, "b", b"2")

    watch = await kv.watch(bucket)

    assert sorted(await _changes(watch, 2)) == [("put", "a", b"1", ra), ("put", "b", b"2", rb)]


async def test_watch_yields_only_the_latest_value_of_each_key_and_no_deleted_keys(
    world: World,
):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    await kv.put(bucket, "a", b"old")
    latest = await kv.put(bucket, "a", b"new")
    await kv.put(bucket, "gone", b"x")
    await kv.delete(bucket, "gone")

    watch = await kv.watch(bucket)

    assert await _changes(watch, 1) == [("put", "a", b"new", latest)]
    with pytest.raises(klieo_shm.Timeout):
        await watch.next(timeout=NOTHING)


async def test_watch_yields_live_puts_and_deletes_in_revision_order(world: World):
    *_, kv, _ = await world.connect()
    *_, writer, _ = await world.connect()
    bucket = world.name("b")
    watch = await kv.watch(bucket)

    r1 = await writer.put(bucket, "a", b"1")
    r2 = await writer.put(bucket, "b", b"2")
    await writer.delete(bucket, "a")
    r4 = await writer.cas(bucket, "b", b"3", r2)

    got = await _changes(watch, 4)
    assert got[:2] == [("put", "a", b"1", r1), ("put", "b", b"2", r2)]
    assert got[2][:3] == ("delete", "a", b"")
    assert got[3] == ("put", "b", b"3", r4)
    assert [c[3] for c in got] == sorted({c[3] for c in got})


async def test_watch_changes_carry_the_bucket(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    watch = await kv.watch(bucket)

    await kv.put(bucket, "k", b"v")
    change = await watch.next(timeout=WAIT)

    assert isinstance(change, klieo_shm.KvChange)
    assert change.bucket == bucket


async def test_watch_current_values_come_before_live_changes(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    await kv.put(bucket, "before", b"1")
    watch = await kv.watch(bucket)

    await kv.put(bucket, "after", b"2")

    assert [c[1] for c in await _changes(watch, 2)] == ["before", "after"]


async def test_watch_with_an_exact_key_sees_only_that_key(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    watch = await kv.watch(bucket, "config.db")

    await kv.put(bucket, "config.cache", b"no")
    await kv.put(bucket, "config.db", b"yes")

    assert [c[1] for c in await _changes(watch, 1)] == ["config.db"]
    with pytest.raises(klieo_shm.Timeout):
        await watch.next(timeout=NOTHING)


async def test_watch_pattern_star_matches_one_token(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    await kv.put(bucket, "agents.a1", b"current")
    await kv.put(bucket, "other.a1", b"no")
    watch = await kv.watch(bucket, "agents.*")

    await kv.put(bucket, "agents.a2", b"live")
    await kv.put(bucket, "agents.a2.status", b"too-deep")
    await kv.put(bucket, "agents", b"too-shallow")

    assert [c[1] for c in await _changes(watch, 2)] == ["agents.a1", "agents.a2"]
    with pytest.raises(klieo_shm.Timeout):
        await watch.next(timeout=NOTHING)


async def test_watch_pattern_greater_than_matches_the_rest(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    watch = await kv.watch(bucket, "agents.>")

    await kv.put(bucket, "agents", b"no")
    await kv.put(bucket, "agents.a1", b"yes")
    await kv.put(bucket, "agents.a1.status", b"yes")
    await kv.delete(bucket, "agents.a1")

    got = await _changes(watch, 3)
    assert [(c[0], c[1]) for c in got] == [
        ("put", "agents.a1"),
        ("put", "agents.a1.status"),
        ("delete", "agents.a1"),
    ]


async def test_watch_does_not_see_other_buckets(world: World):
    *_, kv, _ = await world.connect()
    bucket, other = world.name("b"), world.name("other")
    await kv.put(other, "k", b"v")
    watch = await kv.watch(bucket)

    await kv.put(other, "k", b"v2")

    with pytest.raises(klieo_shm.Timeout):
        await watch.next(timeout=NOTHING)


async def test_watch_ends_on_close(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    watch = await kv.watch(bucket)

    await watch.close()
    await kv.put(bucket, "k", b"v")

    assert await watch.next(timeout=WAIT) is None
    assert [c async for c in watch] == []


async def test_watch_iterates_with_async_for(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    for key in ("a", "b", "c"):
        await kv.put(bucket, key, b"v")
    watch = await kv.watch(bucket)

    seen = []
    async for change in watch:
        seen.append(change.key)
        if len(seen) == 3:
            await watch.close()

    assert sorted(seen) == ["a", "b", "c"]
