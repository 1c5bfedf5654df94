"""The broker's KV table and leases: growth and remapping, the size cap,
segments, and the liveness check behind the lease sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

import klieo_shm
from klieo_shm.daemon import leftover_segments, spawn_daemon
from klieo_shm.daemon._leases import LeaseState, holder_alive


@pytest.fixture
def small_kv(sock: str) -> Iterator[str]:
    """A broker whose KV table starts at 64 KiB and may grow to 512 KiB."""
    with spawn_daemon(sock, "--kv-size", "64K", "--kv-max-size", "512K"):
        yield sock


def kv_segments(sock: str) -> list[str]:
    return [name for name in leftover_segments(sock) if "-kv" in name]


async def test_table_grows_and_a_mapped_reader_remaps_without_losing_a_key(small_kv: str) -> None:
    url = f"shm://{small_kv}"
    async with await klieo_shm.connect(url) as writer, await klieo_shm.connect(url) as reader:
        assert await reader.kv.get("grow", "k0") is None  # maps the first table
        first = kv_segments(small_kv)
        revisions = [await writer.kv.put("grow", f"k{i}", b"%d" % i * 10) for i in range(1500)]

        got = [await reader.kv.get("grow", f"k{i}") for i in range(1500)]

        assert got == [klieo_shm.KvEntry(b"%d" % i * 10, revisions[i]) for i in range(1500)]
        now = kv_segments(small_kv)
        assert len(now) == 1  # the retired tables were unlinked
        assert now != first


def test_sync_get_reads_the_table_in_the_calling_thread_and_follows_growth(small_kv: str) -> None:
    import klieo_shm.sync
    from klieo_shm._values import NEEDS_ROUND_TRIP

    with klieo_shm.sync.connect(f"shm://{small_kv}") as bus:
        local = bus.kv._link.kv_get_local
        assert local is not None
        assert local("sync", "k0") is NEEDS_ROUND_TRIP  # not mapped yet: the loop maps it
        assert bus.kv.get("sync", "k0") is None
        assert local("sync", "k0") is None  # now answered here, no round trip
        revisions = [bus.kv.put("sync", f"k{i}", b"%d" % i * 10) for i in range(1500)]  # grows

        got = [bus.kv.get("sync", f"k{i}") for i in range(1500)]

        assert got == [klieo_shm.KvEntry(b"%d" % i * 10, revisions[i]) for i in range(1500)]
        assert local("sync", "k7") == klieo_shm.KvEntry(b"7" * 10, revisions[7])
        bus.kv.delete("sync", "k7")
        assert bus.kv.get("sync", "k7") is None


async def test_a_value_larger_than_the_first_table_grows_it(small_kv: str) -> None:
    async with await klieo_shm.connect(f"shm://{small_kv}") as bus:
        big = bytes(range(256)) * 1024  # 256 KiB > the 64 KiB first table

        rev = await bus.kv.put("big", "k", big)

        assert await bus.kv.get("big", "k") == klieo_shm.KvEntry(big, rev)


async def test_writes_past_kv_max_size_raise_full_naming_the_limit(small_kv: str) -> None:
    async with await klieo_shm.connect(f"shm://{small_kv}") as bus:
        kv = bus.kv
        written = 0

        async def fill() -> None:
            nonlocal written
            for i in range(10_000):
                await kv.put("cap", f"k{i}", b"x" * 1000)
                written += 1

        with pytest.raises(klieo_shm.Full) as caught:
            await fill()

        assert caught.value.limit == 512 * 1024
        assert "kv-max-size" in caught.value.resource
        assert written > 100
        assert await kv.get("cap", "k0") is not None  # what was written stays readable
        assert await kv.get("cap", f"k{written}") is None
        assert len(await kv.keys("cap")) == written


async def test_delete_of_a_missing_key_takes_no_revision(small_kv: str) -> None:
    async with await klieo_shm.connect(f"shm://{small_kv}") as bus:
        kv = bus.kv
        first = await kv.put("d", "a", b"v")
        await kv.delete("d", "never")
        await kv.delete("d", "a")  # a tombstone: takes first + 1
        await kv.delete("d", "a")

        assert await kv.put("d", "b", b"v") == first + 2


def test_holder_alive_checks_the_start_time_not_only_the_pid() -> None:
    me = psutil.Process()

    assert holder_alive(me.pid, me.create_time())
    assert not holder_alive(me.pid, me.create_time() - 3600.0)  # a reused pid


def test_holder_alive_is_false_for_a_process_that_exited() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = psutil.Process(child.pid).create_time()
    child.wait()

    assert not holder_alive(child.pid, start)


def test_sweep_ends_leases_of_dead_holders_without_a_connection() -> None:
    leases = LeaseState()
    me = psutil.Process()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child_start = psutil.Process(child.pid).create_time()
    child.wait()
    leases.adopt("b", "dead", 3, child.pid, child_start, 60.0, now=0.0)
    leases.adopt("b", "alive", 5, os.getpid(), me.create_time(), 60.0, now=0.0)

    ended = leases.sweep()

    assert ended == [("b", "dead")]
    assert leases.holder("b", "dead", now=1.0) is None
    assert leases.holder("b", "alive", now=1.0) == 5


def test_ttl_expiry_ends_a_lease_at_the_next_tick_and_tokens_keep_increasing() -> None:
    leases = LeaseState()
    leases.adopt("b", "k", 7, os.getpid(), psutil.Process().create_time(), 1.0, now=0.0)

    leases.tick(0.5)
    assert leases.holder("b", "k", now=0.5) == 7
    leases.tick(1.0)

    assert leases.grants == {}
    assert leases.tokens[("b", "k")] == 7


@pytest.mark.parametrize("expected", [-1, 2**64, 0])
async def test_cas_with_a_revision_no_key_can_have_is_a_conflict(
    daemon: str, expected: int
) -> None:
    async with await klieo_shm.connect(f"shm://{daemon}") as bus:
        rev = await bus.kv.put("c", "k", b"v")
        with pytest.raises(klieo_shm.Conflict) as caught:
            await bus.kv.cas("c", "k", b"w", expected)
        assert (caught.value.expected, caught.value.current) == (expected, rev)
        assert await bus.kv.cas("c", "k", b"w", rev) == rev + 1
