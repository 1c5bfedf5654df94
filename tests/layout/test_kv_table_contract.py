"""The KV table's documented contracts, one behaviour per test."""

from __future__ import annotations

import ast
import pathlib

import pytest

import klieo_shm.layout.kv_table as kv_table
import klieo_shm.layout.kv_table_writer as kv_table_writer
from klieo_shm._errors import Full
from klieo_shm.layout._header import LayoutError
from klieo_shm.layout.kv_table import (
    INDEX_OFF,
    MAX_READ_RETRIES,
    KvReadContended,
    KvTableReader,
    KvTableRetired,
    required_size,
)
from klieo_shm.layout.kv_table_writer import KvTableFull, KvTableWriter, copy_into

FORBIDDEN = {"socket", "asyncio", "selectors", "mmap", "select", "trio"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(
    index_slots: int = 16, value_bytes: int = 4096, **kwargs: object
) -> tuple[memoryview, KvTableWriter, KvTableReader]:
    buf = memoryview(bytearray(required_size(index_slots, value_bytes)))
    writer = KvTableWriter(buf, create=True, index_slots=index_slots, **kwargs)  # type: ignore[arg-type]
    return buf, writer, KvTableReader(buf.toreadonly())


@pytest.mark.parametrize("module", [kv_table, kv_table_writer])
def test_kv_table_modules_import_no_io(module: object) -> None:
    path = pathlib.Path(module.__file__)  # type: ignore[attr-defined]
    imported: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.append(node.module)
    assert [n for n in imported if n.split(".")[0] in FORBIDDEN] == []


def test_get_returns_value_and_revision_from_a_read_only_mapping() -> None:
    _, writer, reader = make()
    writer.put("orders", "o.1", b"hello", 7)
    assert reader.get("orders", "o.1") == (b"hello", 7)
    assert isinstance(reader.get("orders", "o.1"), tuple)


def test_reader_reports_usage_from_the_header() -> None:
    _, writer, reader = make()
    writer.put("a", "k", b"v", 1)
    writer.put("a", "j", b"w", 2)
    writer.delete("a", "j", 3)
    usage = reader.usage()
    assert (usage.generation, usage.retired_by, usage.live, usage.tombstones) == (1, 0, 1, 1)
    assert usage.used_bytes == writer.stats().used_bytes > 0
    assert usage.index_slots == 16


def test_absent_key_and_other_bucket_read_none() -> None:
    _, writer, reader = make()
    writer.put("a", "k", b"v", 1)
    assert reader.get("a", "other") is None
    assert reader.get("b", "k") is None


def test_deleted_key_reads_none_and_leaves_keys() -> None:
    _, writer, reader = make()
    writer.put("a", "k", b"v", 1)
    writer.put("a", "j", b"w", 2)
    assert writer.delete("a", "k", 3) is True
    assert reader.get("a", "k") is None
    assert writer.keys("a") == ["j"]
    assert writer.revision("a", "k") == 3
    assert writer.stats().tombstones == 1


def test_delete_of_missing_or_deleted_key_writes_nothing() -> None:
    _, writer, _ = make()
    assert writer.delete("a", "k", 1) is False
    writer.put("a", "k", b"v", 2)
    writer.delete("a", "k", 3)
    assert writer.delete("a", "k", 4) is False
    assert writer.revision("a", "k") == 3


def test_put_after_delete_revives_the_key_in_its_slot() -> None:
    _, writer, reader = make()
    writer.put("a", "k", b"v", 1)
    writer.delete("a", "k", 2)
    writer.put("a", "k", b"again", 3)
    assert reader.get("a", "k") == (b"again", 3)
    assert writer.stats().tombstones == 0


def test_new_key_takes_over_a_tombstone_slot() -> None:
    _, writer, reader = make(index_slots=4, salt=b"\x01" * 8)  # room for 3 keys
    for i in range(3):
        writer.put("a", f"k{i}", b"v", i + 1)
    with pytest.raises(KvTableFull):
        writer.put("a", "k3", b"v", 4)
    writer.delete("a", "k0", 5)
    # A new key whose probe chain meets the tombstone before the empty slot
    # takes the tombstone's slot; the others still find the index full.
    for candidate in (f"new{i}" for i in range(100)):
        try:
            writer.put("a", candidate, b"v3", 6)
        except KvTableFull:
            continue
        break
    else:
        raise AssertionError("no key took over the tombstone's slot")
    assert reader.get("a", candidate) == (b"v3", 6)
    assert reader.get("a", "k0") is None
    assert writer.revision("a", "k0") is None
    assert writer.stats().tombstones == 0


def test_full_index_raises_with_the_limit_and_changes_nothing() -> None:
    _, writer, reader = make(index_slots=8)
    for i in range(6):
        writer.put("a", f"k{i}", b"v", i + 1)
    before = writer.stats()
    with pytest.raises(KvTableFull) as info:
        writer.put("a", "k6", b"v", 7)
    assert isinstance(info.value, Full)
    assert info.value.kind == "index"
    assert info.value.limit == 6
    assert writer.stats() == before
    assert reader.get("a", "k6") is None
    writer.put("a", "k0", b"overwrite is fine", 8)


def test_full_value_space_raises_with_the_limit_and_changes_nothing() -> None:
    _, writer, reader = make(value_bytes=1024)
    writer.put("a", "k", b"x" * 500, 1)
    with pytest.raises(KvTableFull) as info:
        writer.put("a", "j", b"y" * 600, 2)
    assert info.value.kind == "value space"
    assert info.value.limit == 1024
    assert info.value.needed > 600
    assert reader.get("a", "j") is None
    assert reader.get("a", "k") == (b"x" * 500, 1)


def test_replaced_record_space_waits_for_the_grace_period() -> None:
    clock = FakeClock()
    _, writer, _ = make(value_bytes=8192, grace_s=1.0, clock=clock)
    writer.put("a", "k", b"x" * 100, 1)
    writer.put("a", "k", b"y" * 100, 2)
    assert writer.stats().limbo_bytes > 0
    clock.now = 0.5
    writer.reclaim()
    assert writer.stats().limbo_bytes > 0
    clock.now = 1.0
    writer.reclaim()
    assert writer.stats().limbo_bytes == 0
    assert writer.stats().early_reuses == 0


def test_a_same_size_rewrite_takes_the_oldest_due_record_and_holds_steady() -> None:
    clock = FakeClock()
    _, writer, reader = make(value_bytes=8192, grace_s=1.0, clock=clock)
    writer.put("a", "other", b"o" * 100, 1)
    offsets = []
    for rev in range(2, 40):
        clock.now += 0.25
        writer.put("a", "k", bytes([rev]) * 100, rev)
        assert reader.get("a", "k") == (bytes([rev]) * 100, rev)
        offsets.append(writer._entries[("a", "k")].off)
        stats = writer.stats()
        assert stats.used_bytes == writer.value_bytes - stats.free_bytes
    stats = writer.stats()
    # steady state: 1 s of grace at 4 writes a second keeps 4-5 records in limbo
    assert stats.limbo_bytes <= 5 * (stats.used_bytes - stats.limbo_bytes)
    assert stats.early_reuses == 0
    assert len(set(offsets[10:])) <= 6  # the same few records go round
    assert reader.get("a", "other") == (b"o" * 100, 1)


def test_pressure_reuses_limbo_early_and_counts_it() -> None:
    clock = FakeClock()
    _, writer, reader = make(value_bytes=512, grace_s=60.0, clock=clock)
    for rev in range(1, 20):
        writer.put("a", "k", bytes([rev]) * 200, rev)
        assert reader.get("a", "k") == (bytes([rev]) * 200, rev)
    assert writer.stats().early_reuses > 0


def test_freed_space_coalesces_for_a_larger_value() -> None:
    _, writer, reader = make(value_bytes=2048, grace_s=0.0)
    for i in range(8):
        writer.put("a", f"k{i}", b"s" * 150, i + 1)
    for i in range(8):
        writer.delete("a", f"k{i}", 10 + i)
    writer.reclaim()
    writer.put("a", "big", b"B" * 1400, 20)
    assert reader.get("a", "big") == (b"B" * 1400, 20)


def test_retired_table_tells_readers_to_remap() -> None:
    _, old, reader = make()
    old.put("a", "k", b"v", 1)
    buf2 = memoryview(bytearray(required_size(32, 8192)))
    new = KvTableWriter(buf2, create=True, index_slots=32, generation=2)
    assert copy_into(old, new) == 1
    assert not reader.retired
    old.retire(new.generation)
    assert reader.retired
    with pytest.raises(KvTableRetired) as info:
        reader.get("a", "k")
    assert (info.value.generation, info.value.successor) == (1, 2)
    assert KvTableReader(buf2.toreadonly()).get("a", "k") == (b"v", 1)
    with pytest.raises(ValueError, match="successor generation"):
        old.retire(1)
    with pytest.raises(KvTableRetired):
        old.put("a", "k", b"too late", 2)
    assert KvTableWriter(old._buf, create=False).get("a", "k") == (b"v", 1)


def test_reopened_writer_keeps_entries_and_tombstones() -> None:
    buf, writer, reader = make()
    writer.put("a", "k", b"v", 1)
    writer.put("b", "k", b"w", 1)
    writer.delete("b", "k", 2)
    again = KvTableWriter(buf, create=False)
    assert again.keys("a") == ["k"]
    assert again.keys("b") == []
    assert again.revision("b", "k") == 2
    again.put("a", "k", b"new", 3)
    assert reader.get("a", "k") == (b"new", 3)
    assert again.stats().live == 1


def test_restart_over_a_damaged_record_raises_layout_error() -> None:
    buf, writer, _ = make()
    writer.put("a", "k", b"v", 1)
    q = buf.cast("Q")
    w = (INDEX_OFF >> 3) + 2 * writer._entries[("a", "k")].slot
    q[w + 1] ^= 1 << 40  # a stamp that is not the record's
    with pytest.raises(LayoutError, match="damaged"):
        KvTableWriter(buf, create=False)


def test_reader_rejects_a_segment_of_another_kind() -> None:
    buf, _, _ = make()
    buf[0] = ord("X")
    with pytest.raises(LayoutError, match="magic"):
        KvTableReader(buf)


def test_writer_refuses_a_read_only_mapping() -> None:
    buf = memoryview(bytearray(required_size(8, 1024)))
    with pytest.raises(ValueError, match="writable"):
        KvTableWriter(buf.toreadonly(), create=True, index_slots=8)


def test_index_slots_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        required_size(12, 1024)
    buf = memoryview(bytearray(required_size(16, 1024)))
    with pytest.raises(ValueError, match="power of two"):
        KvTableWriter(buf, create=True, index_slots=12)


def test_nul_in_bucket_is_refused_on_both_sides() -> None:
    _, writer, reader = make()
    with pytest.raises(ValueError, match="NUL"):
        writer.put("a\0b", "k", b"v", 1)
    with pytest.raises(ValueError, match="NUL"):
        reader.get("a\0b", "k")


def test_bad_revision_or_name_type_is_refused_before_any_change() -> None:
    _, writer, reader = make()
    before = writer.stats()
    with pytest.raises(ValueError, match="revision"):
        writer.put("a", "k", b"v", -1)
    with pytest.raises(ValueError, match="revision"):
        writer.put("a", "k", b"v", 2**64)
    with pytest.raises(TypeError):
        writer.put("a", b"k", b"v", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        reader.get(b"a", "k")  # type: ignore[arg-type]
    assert writer.stats() == before


def test_reader_skips_a_slot_whose_ref_is_not_published_yet() -> None:
    buf, writer, reader = make()
    writer.put("a", "k", b"v", 1)
    q = buf.cast("Q")
    slot = next(i for i in range(16) if q[(INDEX_OFF >> 3) + 2 * i])
    ref = q[(INDEX_OFF >> 3) + 2 * slot + 1]
    q[(INDEX_OFF >> 3) + 2 * slot + 1] = 0  # tag stored, ref not yet
    assert reader.get("a", "k") is None
    q[(INDEX_OFF >> 3) + 2 * slot + 1] = ref
    assert reader.get("a", "k") == (b"v", 1)


def test_many_buckets_and_keys_round_trip() -> None:
    _, writer, reader = make(index_slots=4096, value_bytes=1 << 20)
    for b in range(20):
        for k in range(100):
            writer.put(f"bucket{b}", f"key.{k}", f"{b}:{k}".encode(), k + 1)
    for b in range(20):
        assert len(writer.keys(f"bucket{b}")) == 100
        for k in range(100):
            assert reader.get(f"bucket{b}", f"key.{k}") == (f"{b}:{k}".encode(), k + 1)


def _slot_words(buf: memoryview, index_slots: int) -> list[int]:
    q = buf.cast("Q")
    return [(INDEX_OFF >> 3) + 2 * i for i in range(index_slots) if q[(INDEX_OFF >> 3) + 2 * i]]


def test_read_that_keeps_failing_validation_raises_contended() -> None:
    buf, writer, reader = make()
    writer.put("a", "k", b"v", 1)
    q = buf.cast("Q")
    (w,) = _slot_words(buf, 16)
    seq_word = (writer._voff >> 3) + (q[w + 1] & 0xFFFFFFFF)
    q[seq_word] += 1  # the record looks as if it were being rewritten, forever
    with pytest.raises(KvReadContended) as info:
        reader.get("a", "k")
    assert info.value.attempts == MAX_READ_RETRIES
    q[seq_word] -= 1
    assert reader.get("a", "k") == (b"v", 1)


def test_restart_after_a_crash_between_tag_and_ref_forgets_the_half_insert() -> None:
    buf, writer, reader = make()
    writer.put("a", "k", b"v", 1)
    writer.put("a", "j", b"w", 2)
    q = buf.cast("Q")
    w = (INDEX_OFF >> 3) + 2 * writer._entries[("a", "j")].slot
    q[w + 1] = 0  # as if the broker died after storing the tag of "j"
    assert reader.get("a", "j") is None
    again = KvTableWriter(buf, create=False)
    assert again.keys("a") == ["k"]
    assert q[w] == 0
    again.put("a", "j", b"w2", 3)
    assert reader.get("a", "j") == (b"w2", 3)
    assert reader.get("a", "k") == (b"v", 1)


def test_restart_after_a_crash_while_taking_over_a_tombstone_keeps_the_tombstone() -> None:
    buf, writer, reader = make()
    writer.put("a", "k", b"v", 1)
    writer.delete("a", "k", 2)
    q = buf.cast("Q")
    w = (INDEX_OFF >> 3) + 2 * writer._entries[("a", "k")].slot
    q[w] = 12345 | 1  # as if the broker died after storing another key's tag here
    again = KvTableWriter(buf, create=False)
    assert again.revision("a", "k") == 2
    assert again.stats().tombstones == 1
    again.put("a", "k", b"back", 3)
    assert reader.get("a", "k") == (b"back", 3)


def test_reader_works_over_a_prot_read_mapping(tmp_path: pathlib.Path) -> None:
    import mmap

    size = required_size(16, 4096)
    path = tmp_path / "kv"
    path.write_bytes(bytes(size))
    with path.open("r+b") as f:
        rw = mmap.mmap(f.fileno(), size)
        ro = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    writer = KvTableWriter(memoryview(rw), create=True, index_slots=16)
    reader = KvTableReader(memoryview(ro))
    try:
        writer.put("a", "k", b"v" * 100, 1)
        assert reader.get("a", "k") == (b"v" * 100, 1)
        writer.put("a", "k", b"w" * 7, 2)
        assert reader.get("a", "k") == (b"w" * 7, 2)
    finally:
        reader.close()
        writer.close()
        ro.close()
        rw.close()
