"""Property tests for the tx-arena ring and the store's buddy allocator."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from klieo_shm.layout import BuddyAllocator, RingAllocator
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
