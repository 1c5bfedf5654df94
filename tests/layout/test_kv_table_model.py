"""The KV table against a dict model: puts, deletes, overwrites of varying
length, many buckets, reclamation, broker restarts and growth."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from klieo_shm.layout.kv_table import KvTableReader, KvTableRetired, required_size
from klieo_shm.layout.kv_table_writer import (
    KvTableFull,
    KvTableWriter,
    copy_into,
    grow_geometry,
)

BUCKETS = st.sampled_from(["a", "b", "orders", "dedup.q", "ü"])
KEYS = st.sampled_from(["k", "k1", "key.with.dots", "x/y", "é", "a-very-long-key-" * 4])
VALUES = st.binary(min_size=0, max_size=300)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class KvTableMachine(RuleBasedStateMachine):
    """One writer, one read-only reader, a dict of (bucket, key) -> (value, rev)."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.model: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.revs: dict[str, int] = {}
        self.generation = 1
        self._new_table(index_slots=8, value_bytes=1024)

    def _new_table(self, index_slots: int, value_bytes: int) -> None:
        self.buf = memoryview(bytearray(required_size(index_slots, value_bytes)))
        self.writer = KvTableWriter(
            self.buf,
            create=True,
            index_slots=index_slots,
            generation=self.generation,
            grace_s=1.0,
            clock=self.clock,
        )
        self.reader = KvTableReader(self.buf.toreadonly())

    def _next_rev(self, bucket: str) -> int:
        self.revs[bucket] = self.revs.get(bucket, 0) + 1
        return self.revs[bucket]

    def _grow(self, exc: KvTableFull) -> None:
        old_writer, old_reader = self.writer, self.reader
        slots, value_bytes = grow_geometry(old_writer.stats(), exc.needed)
        self.generation += 1
        self._new_table(slots, value_bytes)
        assert copy_into(old_writer, self.writer) == len(self.model)
        old_writer.retire(self.generation)
        assert old_reader.retired
        with pytest.raises(KvTableRetired) as info:
            old_reader.get("a", "k")
        assert info.value.successor == self.generation

    def _try_put(self, bucket: str, key: str, value: bytes, rev: int) -> KvTableFull | None:
        try:
            self.writer.put(bucket, key, value, rev)
        except KvTableFull as exc:
            return exc
        return None

    @rule(bucket=BUCKETS, key=KEYS, value=VALUES)
    def put(self, bucket: str, key: str, value: bytes) -> None:
        rev = self._next_rev(bucket)
        for _ in range(4):
            full = self._try_put(bucket, key, value, rev)
            if full is None:
                break
            assert full.limit in (self.writer.value_bytes, self.writer.max_occupied)
            self._grow(full)
        else:
            raise AssertionError("growth did not make room")
        self.model[(bucket, key)] = (value, rev)

    @rule(bucket=BUCKETS, key=KEYS)
    def delete(self, bucket: str, key: str) -> None:
        rev = self._next_rev(bucket)
        try:
            removed = self.writer.delete(bucket, key, rev)
        except KvTableFull as exc:
            self._grow(exc)
            removed = self.writer.delete(bucket, key, rev)
        assert removed == ((bucket, key) in self.model)
        self.model.pop((bucket, key), None)

    @rule(seconds=st.sampled_from([0.0, 0.5, 2.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds
        self.writer.reclaim()

    @precondition(lambda self: self.writer.stats().live > 0)
    @rule()
    def broker_restarts(self) -> None:
        """A new writer over the same segment rebuilds its state from it."""
        self.writer = KvTableWriter(self.buf, create=False, grace_s=1.0, clock=self.clock)

    @invariant()
    def reader_and_writer_agree_with_the_model(self) -> None:
        for bucket in ["a", "b", "orders", "dedup.q", "ü"]:
            expected_keys = sorted(k for (b, k) in self.model if b == bucket)
            assert sorted(self.writer.keys(bucket)) == expected_keys
        for (bucket, key), (value, rev) in self.model.items():
            assert self.reader.get(bucket, key) == (value, rev)
            assert self.writer.get(bucket, key) == (value, rev)
        assert self.reader.get("a", "never-written") is None

    @invariant()
    def stats_add_up(self) -> None:
        s = self.writer.stats()
        assert s.live == len(self.model)
        assert s.live + s.tombstones <= s.max_occupied
        assert s.used_bytes + s.free_bytes == s.value_bytes
        assert 0 <= s.limbo_bytes <= s.used_bytes


KvTableMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_kv_table_matches_a_dict_model = KvTableMachine.TestCase
