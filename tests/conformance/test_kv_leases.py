"""KV: leases — exclusive, extended by heartbeat, ended by release, TTL or
the holder going away, fenced by increasing tokens, and apart from values."""

from __future__ import annotations

import asyncio

import pytest

import klieo_shm

from .world import World, at_once, eventually

LONG = 30.0


async def test_lease_is_exclusive_while_held(world: World):
    *_, kv, _ = await world.connect()
    *_, rival, _ = await world.connect()
    bucket = world.name("locks")
    held = await kv.lease(bucket, "leader", LONG)

    with pytest.raises(klieo_shm.Conflict) as caught:
        await rival.lease(bucket, "leader", LONG)

    assert caught.value.current == held.token


async def test_lease_is_exclusive_on_the_same_bus_too(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("locks")
    await kv.lease(bucket, "leader", LONG)

    with pytest.raises(klieo_shm.Conflict):
        await kv.lease(bucket, "leader", LONG)


async def test_lease_carries_bucket_key_ttl_and_an_int_token(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("locks")

    lease = await kv.lease(bucket, "leader", LONG)

    assert (lease.bucket, lease.key, lease.ttl) == (bucket, "leader", LONG)
    assert isinstance(lease.token, int)


async def test_leases_on_different_keys_do_not_conflict(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("locks")

    await kv.lease(bucket, "a", LONG)
    await kv.lease(bucket, "b", LONG)
    await kv.lease(world.name("other"), "a", LONG)


async def test_release_lets_another_take_the_lease(world: World):
    *_, kv, _ = await world.connect()
    *_, rival, _ = await world.connect()
    bucket = world.name("locks")
    lease = await kv.lease(bucket, "leader", LONG)

    await lease.release()

    taken = await rival.lease(bucket, "leader", LONG)
    assert taken.token > lease.token


async def test_release_twice_is_allowed(world: World):
    *_, kv, _ = await world.connect()
    lease = await kv.lease(world.name("locks"), "leader", LONG)

    await lease.release()
    await lease.release()


async def test_leaving_the_lease_context_releases_it(world: World):
    *_, kv, _ = await world.connect()
    *_, rival, _ = await world.connect()
    bucket = world.name("locks")

    async with await kv.lease(bucket, "leader", LONG) as lease:
        with pytest.raises(klieo_shm.Conflict):
            await rival.lease(bucket, "leader", LONG)

    assert (await rival.lease(bucket, "leader", LONG)).token > lease.token


async def test_leaving_the_lease_context_by_an_exception_releases_it(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("locks")

    with pytest.raises(RuntimeError):
        async with await kv.lease(bucket, "leader", LONG):
            raise RuntimeError("work failed")

    await kv.lease(bucket, "leader", LONG)


async def test_heartbeat_keeps_a_short_lease_exclusive_past_its_ttl(world: World):
    *_, kv, _ = await world.connect()
    *_, rival, _ = await world.connect()
    bucket = world.name("locks")
    lease = await kv.lease(bucket, "leader", 1.0)

    for _ in range(10):  # 2.5 s, over two TTLs
        await asyncio.sleep(0.25)
        await lease.heartbeat()
        with pytest.raises(klieo_shm.Conflict):
            await rival.lease(bucket, "leader", LONG)


async def test_lease_ends_when_its_ttl_runs_out(world: World):
    *_, kv, _ = await world.connect()
    *_, rival, _ = await world.connect()
    bucket = world.name("locks")
    lease = await kv.lease(bucket, "leader", 0.3)

    taken = await eventually(lambda: rival.lease(bucket, "leader", LONG))

    assert taken.token > lease.token


async def test_lease_ends_at_once_when_the_holders_bus_closes(world: World):
    holder = await world.connect()
    *_, rival, _ = await world.connect()
    bucket = world.name("locks")
    lease = await holder.kv.lease(bucket, "leader", LONG)

    await holder.close()

    taken = await at_once(eventually(lambda: rival.lease(bucket, "leader", LONG)))
    assert taken.token > lease.token


async def test_heartbeat_after_expiry_and_takeover_raises_conflict(world: World):
    *_, kv, _ = await world.connect()
    *_, rival, _ = await world.connect()
    bucket = world.name("locks")
    old = await kv.lease(bucket, "leader", 0.3)
    new = await eventually(lambda: rival.lease(bucket, "leader", LONG))

    with pytest.raises(klieo_shm.Conflict) as caught:
        await old.heartbeat()

    assert caught.value.expected == old.token
    assert caught.value.current == new.token
    with pytest.raises(klieo_shm.Conflict):  # the holder is still the new one
        await kv.lease(bucket, "leader", LONG)


async def test_release_after_expiry_and_takeover_raises_conflict_and_keeps_the_new_lease(
    world: World,
):
    *_, kv, _ = await world.connect()
    *_, rival, _ = await world.connect()
    bucket = world.name("locks")
    old = await kv.lease(bucket, "leader", 0.3)
    await eventually(lambda: rival.lease(bucket, "leader", LONG))

    with pytest.raises(klieo_shm.Conflict):
        await old.release()

    with pytest.raises(klieo_shm.Conflict):
        await kv.lease(bucket, "leader", LONG)


async def test_heartbeat_after_release_raises_conflict(world: World):
    *_, kv, _ = await world.connect()
    lease = await kv.lease(world.name("locks"), "leader", LONG)
    await lease.release()

    with pytest.raises(klieo_shm.Conflict):
        await lease.heartbeat()


async def test_tokens_increase_with_each_grant_of_a_key(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("locks")
    tokens = []
    for _ in range(4):
        lease = await kv.lease(bucket, "leader", LONG)
        tokens.append(lease.token)
        await lease.release()

    assert tokens == sorted(set(tokens))


async def test_lease_does_not_touch_the_keys_value(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("locks")
    rev = await kv.put(bucket, "leader", b"value")

    lease = await kv.lease(bucket, "leader", LONG)
    assert await kv.get(bucket, "leader") == klieo_shm.KvEntry(b"value", rev)
    await lease.heartbeat()
    await lease.release()

    assert await kv.get(bucket, "leader") == klieo_shm.KvEntry(b"value", rev)
    assert await kv.put(bucket, "other", b"v") == rev + 1  # no revisions were used


async def test_lease_on_an_absent_key_leaves_it_absent(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("locks")

    async with await kv.lease(bucket, "leader", LONG):
        assert await kv.get(bucket, "leader") is None
        assert await kv.keys(bucket) == []

    assert await kv.get(bucket, "leader") is None


async def test_held_lease_does_not_block_writes_to_the_key(world: World):
    *_, kv, _ = await world.connect()
    *_, other, _ = await world.connect()
    bucket = world.name("locks")

    async with await kv.lease(bucket, "leader", LONG):
        rev = await other.put(bucket, "leader", b"written")

    assert await kv.get(bucket, "leader") == klieo_shm.KvEntry(b"written", rev)
