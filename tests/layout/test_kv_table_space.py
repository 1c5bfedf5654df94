"""Property tests for the KV table's value-space allocator."""

from __future__ import annotations

import itertools

from hypothesis import event, given, settings
from hypothesis import strategies as st

from klieo_shm.layout.kv_table_space import MIN_BLOCK, ValueSpace

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(min_value=1, max_value=600)),
        st.tuples(st.just("retire"), st.integers(min_value=0, max_value=50)),
        st.tuples(st.just("tick"), st.sampled_from([0.4, 1.0])),
        st.tuples(st.just("flush"), st.just(0)),
        # reuse: need = the oldest retired record's size minus this many words
        st.tuples(st.just("reuse"), st.integers(min_value=-2, max_value=8)),
        st.tuples(st.just("advance"), st.sampled_from([0.4, 1.0])),
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
    reused = 0
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
        elif op == "reuse":
            oldest = space.limbo[0] if space.limbo else None
            need = max(8, (oldest[2] if oldest else 64) - 8 * int(arg))
            got = space.reuse(need, now)
            if got is None:
                assert oldest is None or oldest[0] > now or not need <= oldest[2] < need + MIN_BLOCK
            else:
                assert oldest is not None
                assert got == (oldest[1], oldest[2])
                held.append(got)
                reused += 1
        elif op == "retire" and held:
            start, cap = held.pop(int(arg) % len(held))
            space.retire(start, cap, now)
        elif op == "tick":
            now += arg
            space.reclaim(now)
        elif op == "advance":  # time passes; nothing reclaimed yet (``reuse`` may take it)
            now += arg
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
    event(f"reused {min(reused, 2)}{'+' if reused >= 2 else ''}")


def _tiles(space: ValueSpace, held: list[tuple[int, int]], size: int) -> None:
    spans = sorted(held + [(s, c) for _, s, c in space.limbo] + space.free_blocks())
    pos = 0
    for start, length in spans:
        assert start == pos, "a gap or an overlap in the value space"
        pos = start + length
    assert pos == size


@settings(max_examples=200, deadline=None)
@given(
    rewrites=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.sampled_from([64, 64, 64, 72, 200])),
        min_size=1,
        max_size=200,
    )
)
def test_rewrites_take_due_records_straight_from_limbo(rewrites: list[tuple[int, int]]) -> None:
    """As the table writer rewrites keys: ``reuse`` first, then ``alloc``."""
    size = 64 * 200
    space = ValueSpace(size, grace_s=1.0)
    space.release(0, size)
    now = 0.0
    keys: dict[int, tuple[int, int]] = {}
    for key, need in rewrites:
        now += 0.3
        oldest = space.limbo[0] if space.limbo else None
        got = space.reuse(need, now)
        if got is not None:
            assert oldest is not None
            assert oldest[0] <= now
            assert got == (oldest[1], oldest[2])
        space.reclaim(now)
        got = got or space.alloc(need)
        assert got is not None
        assert need <= got[1] < need + MIN_BLOCK
        old = keys.get(key)
        keys[key] = got
        if old is not None:
            space.retire(*old, now)
        _tiles(space, list(keys.values()), size)
        assert space.free_bytes == sum(sz for _, sz in space.free_blocks())
        assert space.limbo_bytes == sum(c for _, _, c in space.limbo)


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
