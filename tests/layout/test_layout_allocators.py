"""Property tests for the tx-arena ring, its keep zone's first-fit
allocator, and the store's buddy allocator."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from klieo_shm.layout import BuddyAllocator, FitAllocator, RingAllocator
from klieo_shm.layout._arena import ALIGN


@settings(max_examples=300)
@given(
    capacity_units=st.integers(min_value=1, max_value=64),
    ops=st.lists(st.one_of(st.integers(min_value=1, max_value=5000), st.none()), max_size=200),
)
def test_ring_regions_never_overlap_and_stay_inside(
    capacity_units: int, ops: list[int | None]
) -> None:
    capacity = capacity_units * ALIGN * 4
    ring = RingAllocator(capacity)
    live: list[tuple[int, int]] = []
    for op in ops:
        if op is None:
            if live:
                ring.free_oldest()
                live.pop(0)
            continue
        off = ring.alloc(op)
        if off is None:
            # refused only when it cannot fit next to the live regions
            assert op > capacity or live
            continue
        assert off % ALIGN == 0
        assert off >= 0
        assert off + op <= capacity
        for a, b in live:
            assert off + op <= a or b <= off, "overlap"
        live.append((off, off + op))
        assert ring.used <= capacity
    while live:
        ring.free_oldest()
        live.pop(0)
    assert ring.used == 0
    assert ring.alloc(capacity) == 0


@settings(max_examples=300)
@given(
    ops=st.lists(
        st.one_of(
            st.integers(min_value=1, max_value=70000), st.integers(min_value=-50, max_value=-1)
        ),
        max_size=200,
    )
)
def test_buddy_blocks_never_overlap_and_merge_back(ops: list[int]) -> None:
    size = 1 << 18
    buddy = BuddyAllocator(size, 256)
    live: dict[int, int] = {}
    for op in ops:
        if op < 0:
            if live:
                off = sorted(live)[(-op) % len(live)]
                buddy.free(off)
                del live[off]
            continue
        off = buddy.alloc(op)
        if off is None:
            assert buddy.largest_free() < op
            continue
        block = buddy.block_size(op)
        assert block >= op
        assert off % block == 0
        assert off + block <= size
        for o, b in live.items():
            assert off + block <= o or o + b <= off, "overlap"
        live[off] = block
        assert buddy.used == sum(live.values())
        # the free blocks and the live ones tile the whole area
        tiles = sorted([*buddy.free_blocks(), *live.items()])
        assert sum(b for _, b in tiles) == size
        assert all(o + b == nxt for (o, b), (nxt, _) in itertools.pairwise(tiles))
    for off in list(live):
        buddy.free(off)
    assert buddy.used == 0
    assert buddy.largest_free() == size
    assert buddy.alloc(size) == 0


def test_buddy_refuses_more_than_it_holds() -> None:
    buddy = BuddyAllocator(1 << 12, 256)
    assert buddy.alloc((1 << 12) + 1) is None
    assert buddy.alloc(1 << 12) == 0
    assert buddy.alloc(1) is None


@settings(max_examples=300)
@given(
    units=st.integers(min_value=1, max_value=64),
    ops=st.lists(
        st.one_of(
            st.integers(min_value=1, max_value=5000), st.integers(min_value=-50, max_value=-1)
        ),
        max_size=200,
    ),
)
def test_fit_regions_never_overlap_free_in_any_order_and_merge_back(
    units: int, ops: list[int]
) -> None:
    """Allocations (positive ops) stay inside the zone and apart; a negative
    op frees a live region chosen by it, in any order. A refusal means no
    free run is long enough; after everything is freed the zone is one run."""
    base, capacity = ALIGN * 3, units * ALIGN * 4
    fit = FitAllocator(base, capacity)
    live: list[tuple[int, int]] = []
    for op in ops:
        if op < 0:
            if live:
                off, _ = live.pop(-op % len(live))
                fit.free(off)
        else:
            size = -(-op // ALIGN) * ALIGN
            off = fit.alloc(op)
            runs = fit.free_runs()
            if off is None:
                assert all(end - start < size for start, end in runs)
                continue
            assert off % ALIGN == 0
            assert base <= off
            assert off + size <= base + capacity
            for a, b in live:
                assert off + size <= a or b <= off, "overlap"
            live.append((off, off + size))
        runs = fit.free_runs()
        assert all(a < b for a, b in runs)
        assert all(b1 < a2 for (_, b1), (a2, _) in itertools.pairwise(runs)), "unmerged runs"
        assert fit.used == sum(b - a for a, b in live)
        assert fit.used + sum(b - a for a, b in runs) == capacity
        assert len(fit) == len(live)
    for off, _ in live:
        fit.free(off)
    assert fit.free_runs() == [(base, base + capacity)]
    assert fit.used == 0


def test_fit_hands_out_the_lowest_free_address_first() -> None:
    fit = FitAllocator(0, 8 * ALIGN)
    a, b, c = fit.alloc(ALIGN), fit.alloc(ALIGN), fit.alloc(ALIGN)
    assert (a, b, c) == (0, ALIGN, 2 * ALIGN)
    fit.free(b)
    assert fit.alloc(1) == ALIGN  # the hole, not the end
    assert fit.alloc(6 * ALIGN) is None
    assert fit.alloc(5 * ALIGN) == 3 * ALIGN
