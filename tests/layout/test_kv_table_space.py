"""Property tests for the KV table's value-space allocator."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from klieo_shm.layout.kv_table_space import MIN_BLOCK, ValueSpace

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(min_value=1, max_value=600)),
        st.tuples(st.just("retire"), st.integers(min_value=0, max_value=50)),
        st.tuples(st.just("tick"), st.sampled_from([0.4, 1.0])),
        st.tuples(st.just("flush"), st.just(0)),
    ),
    max_size=150,
)


@settings(max_examples=300, deadline=None)
@given(size_units=st.integers(min_value=6, max_value=512), ops=OPS)
def test_blocks_never_overlap_and_every_byte_is_accounted_for(
    size_units: int, ops: list[tuple[str, float]]
) -> None:
    size = size_units * 8
    space = ValueSpace(size, grace_s=1.0)
    space.release(0, size)
    now = 0.0
    held: list[tuple[int, int]] = []
    for op, arg in ops:
        if op == "alloc":
            need = (int(arg) + 7) // 8 * 8
            got = space.alloc(need)
            if got is None:
                # refused only when no free block is big enough
                assert all(sz < need for _, sz in space.free_blocks())
                continue
            start, cap = got
            assert need <= cap < need + MIN_BLOCK
            assert start >= 0
            assert start + cap <= size
            assert start % 8 == 0
            held.append(got)
        elif op == "retire" and held:
            start, cap = held.pop(int(arg) % len(held))
            space.retire(start, cap, now)
        elif op == "tick":
            now += arg
            space.reclaim(now)
        elif op == "flush":
            space.flush()
        free = space.free_blocks()
        limbo = [(s, c) for _, s, c in space.limbo]
        spans = sorted(held + limbo + free)
        pos = 0
        for start, length in spans:
            assert start == pos, "a gap or an overlap in the value space"
            pos = start + length
        assert pos == size
        assert space.free_bytes == sum(sz for _, sz in free)
        assert space.limbo_bytes == sum(c for _, c in limbo)
        # free neighbours are always merged
        assert all(a + la != b for (a, la), (b, _) in itertools.pairwise(free))
    for start, cap in held:
        space.retire(start, cap, now)
    space.flush()
    assert space.free_blocks() == [(0, size)]


def test_limbo_waits_for_its_grace_period() -> None:
    space = ValueSpace(1024, grace_s=1.0)
    space.release(0, 1024)
    got = space.alloc(1024)
    assert got == (0, 1024)
    space.retire(0, 1024, now=5.0)
    space.reclaim(5.9)
    assert space.alloc(64) is None
    space.reclaim(6.0)
    assert space.alloc(64) == (0, 64)
    assert space.early_reuses == 0
