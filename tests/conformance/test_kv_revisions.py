"""KV: get/put/delete/keys and per-bucket revisions."""

from __future__ import annotations

import pytest

import klieo_shm

from .world import World


async def test_first_put_in_a_bucket_returns_revision_1(world: World):
    *_, kv, _ = await world.connect()

    assert await kv.put(world.name("b"), "k", b"v") == 1


async def test_revisions_strictly_increase_across_keys_of_a_bucket(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")

    revisions = [await kv.put(bucket, key, b"v") for key in ("a", "b", "a", "c", "b")]

    assert revisions == sorted(set(revisions))
    assert revisions[0] == 1


async def test_revisions_of_different_buckets_are_independent(world: World):
    *_, kv, _ = await world.connect()
    one, two = world.name("one"), world.name("two")
    for i in range(3):
        await kv.put(one, f"k{i}", b"v")

    assert await kv.put(two, "k", b"v") == 1
    assert await kv.put(one, "k", b"v") == 4


async def test_revisions_are_shared_by_all_buses(world: World):
    *_, kv1, _ = await world.connect()
    *_, kv2, _ = await world.connect()
    bucket = world.name("b")

    first = await kv1.put(bucket, "a", b"1")
    second = await kv2.put(bucket, "b", b"2")

    assert second > first
    assert (await kv1.get(bucket, "b")).revision == second


async def test_get_of_an_absent_key_returns_none(world: World):
    *_, kv, _ = await world.connect()

    assert await kv.get(world.name("b"), "missing") is None


async def test_get_returns_the_value_and_revision_of_the_last_put(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    await kv.put(bucket, "k", b"old")
    rev = await kv.put(bucket, "k", b"new")

    entry = await kv.get(bucket, "k")

    assert entry == klieo_shm.KvEntry(value=b"new", revision=rev)
    assert type(entry.value) is bytes


@pytest.mark.parametrize(
    "value", [bytearray(b"val"), memoryview(b"val")], ids=["bytearray", "memoryview"]
)
async def test_put_accepts_bytes_like_values(world: World, value):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")

    await kv.put(bucket, "k", value)

    assert (await kv.get(bucket, "k")).value == b"val"


async def test_empty_value_is_a_present_key(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")

    rev = await kv.put(bucket, "k", b"")

    assert await kv.get(bucket, "k") == klieo_shm.KvEntry(b"", rev)
    assert await kv.keys(bucket) == ["k"]


async def test_deleted_key_is_absent(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    await kv.put(bucket, "k", b"v")

    await kv.delete(bucket, "k")

    assert await kv.get(bucket, "k") is None


async def test_delete_of_a_missing_key_succeeds(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")

    await kv.delete(bucket, "never")
    await kv.put(bucket, "gone", b"v")
    await kv.delete(bucket, "gone")
    await kv.delete(bucket, "gone")


async def test_put_after_delete_gets_a_higher_revision(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    first = await kv.put(bucket, "k", b"1")
    await kv.delete(bucket, "k")

    again = await kv.put(bucket, "k", b"2")

    assert again > first
    assert await kv.get(bucket, "k") == klieo_shm.KvEntry(b"2", again)


async def test_keys_are_sorted_and_exclude_deleted_keys(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    for key in ("zeta", "alpha", "m.n", "beta", "gone"):
        await kv.put(bucket, key, b"v")
    await kv.delete(bucket, "gone")

    assert await kv.keys(bucket) == ["alpha", "beta", "m.n", "zeta"]


async def test_keys_of_an_unknown_bucket_is_empty(world: World):
    *_, kv, _ = await world.connect()

    assert await kv.keys(world.name("never")) == []


async def test_keys_of_one_bucket_do_not_show_in_another(world: World):
    *_, kv, _ = await world.connect()
    one, two = world.name("one"), world.name("two")
    await kv.put(one, "a", b"v")
    await kv.put(two, "b", b"v")

    assert await kv.keys(one) == ["a"]
    assert await kv.get(two, "a") is None


async def test_same_key_in_two_buckets_holds_two_values(world: World):
    *_, kv, _ = await world.connect()
    one, two = world.name("one"), world.name("two")
    await kv.put(one, "k", b"1")
    await kv.put(two, "k", b"2")

    assert (await kv.get(one, "k")).value == b"1"
    assert (await kv.get(two, "k")).value == b"2"


async def test_value_over_the_limit_raises_payload_too_large(world: World):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")
    limit = world.backend.max_payload

    with pytest.raises(klieo_shm.PayloadTooLarge) as caught:
        await kv.put(bucket, "k", b"x" * (limit + 1))

    assert (caught.value.size, caught.value.limit) == (limit + 1, limit)
    assert await kv.get(bucket, "k") is None
