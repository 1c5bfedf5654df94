"""A client's tx arena zones: which batches are offered for keeping, how
their regions come back, and when a full keep zone spills into the ring."""

from __future__ import annotations

from klieo_shm.layout._arena import ALIGN
from klieo_shm.shm._arenas import TxZones

SIZE = 64 * ALIGN * 16  # 64 KiB: a 32 KiB ring and a 32 KiB keep zone
BIG = 12 * 1024  # over KEEP_MIN
KEEP_MIN = 8 * 1024


def take(zones: TxZones, n: int, *, kept: bool) -> int:
    """Allocate ``n`` bytes, which must land in the keep zone iff ``kept``."""
    got = zones.alloc(n)
    assert got is not None
    assert got[1] is kept
    return got[0]


def test_without_keeping_the_ring_spans_the_arena() -> None:
    zones = TxZones(SIZE, 0)
    assert zones.keep is None
    assert zones.ring.capacity == SIZE
    assert zones.alloc(BIG) == (0, False)


def test_big_batches_go_to_the_keep_zone_small_ones_to_the_ring() -> None:
    zones = TxZones(SIZE, KEEP_MIN)
    assert zones.ring.capacity == SIZE // 2
    assert zones.alloc(100) == (0, False)
    assert zones.alloc(BIG) == (SIZE // 2, True)


def test_kept_regions_come_back_by_release_in_any_order() -> None:
    zones = TxZones(SIZE, KEEP_MIN)
    a, b = (take(zones, BIG, kept=True) for _ in range(2))
    zones.answered(1, a, kept_zone=True, kept=True)
    zones.answered(2, b, kept_zone=True, kept=True)
    assert zones.kept == 2
    assert zones.released(2)
    assert zones.released(1)
    assert zones.kept == 0
    assert not zones.released(1)  # not kept any more: a broken broker
    assert zones.alloc(BIG) == (a, True)  # the lowest free address again


def test_a_batch_the_broker_copied_frees_its_keep_region_on_puback() -> None:
    zones = TxZones(SIZE, KEEP_MIN)
    off = take(zones, BIG, kept=True)
    zones.answered(1, off, kept_zone=True, kept=False)
    assert zones.kept == 0
    assert zones.keep is not None
    assert zones.keep.used == 0


def test_a_full_keep_zone_waits_until_it_spills_then_uses_the_ring() -> None:
    zones = TxZones(SIZE, KEEP_MIN)
    for n in (1, 2):
        zones.answered(n, take(zones, BIG, kept=True), kept_zone=True, kept=True)
    assert zones.alloc(BIG) is None  # the zone is full of kept batches: wait
    assert zones.waits_for_keep(BIG)
    assert zones.alloc(100) == (0, False)  # small batches are not held up
    zones.spill = True  # the client's timer: waited long enough
    assert not zones.waits_for_keep(BIG)
    take(zones, BIG, kept=False)  # into the ring, copied by the broker
    assert zones.released(1)  # a Release: consumers move again
    assert zones.spill is False
    assert zones.alloc(BIG) == (SIZE // 2, True)


def test_an_arena_size_off_the_alignment_splits_on_aligned_bounds() -> None:
    zones = TxZones(2_500_000, KEEP_MIN)
    assert zones.keep is not None
    assert zones.keep.base % ALIGN == 0
    assert zones.ring.capacity == zones.keep.base
    assert zones.keep.base + zones.keep.capacity <= 2_500_000
    take(zones, BIG, kept=True)
