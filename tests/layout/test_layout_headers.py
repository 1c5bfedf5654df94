"""Segment headers: magic, version, ownership, slot tags."""

from __future__ import annotations

import pytest

from klieo_shm.daemon._recovery import _arena_data
from klieo_shm.layout import (
    ARENA_VERSION,
    HEADER_SIZE,
    SERVICES_WORD,
    SLOT,
    STORE_VERSION,
    LayoutError,
    check_slot,
    init_arena,
    init_store,
    mark_read,
    open_arena,
    open_store,
    publish_services_epoch,
    read_mark,
    read_word,
    write_slot,
)
from klieo_shm.layout._header import write_word


def test_arena_header_round_trips_and_names_its_owner() -> None:
    buf = memoryview(bytearray(HEADER_SIZE + 4096))
    assert init_arena(buf, client_id=7, pid=123, start_us=99) == 4096
    data = open_arena(buf, 7)
    assert len(data) == 4096
    with pytest.raises(ValueError, match="belongs to client 7"):
        open_arena(buf, 8)


def test_arena_read_mark_starts_at_zero_and_is_the_clients_word() -> None:
    buf = memoryview(bytearray(HEADER_SIZE + 4096))
    buf[:HEADER_SIZE] = b"\xff" * HEADER_SIZE  # a spare arena's old header
    init_arena(buf, client_id=7, pid=123, start_us=99)
    assert read_mark(buf) == 0
    mark_read(buf, 12345)
    assert read_mark(buf) == 12345
    assert read_word(buf, 5) == 99  # the owner's start time beside it is untouched


def test_arena_of_version_2_has_no_read_mark_and_is_refused() -> None:
    buf = memoryview(bytearray(HEADER_SIZE + 4096))
    init_arena(buf, client_id=7, pid=123, start_us=99)
    assert ARENA_VERSION == 3
    buf[8] = 2
    with pytest.raises(LayoutError, match="version 2"):
        open_arena(buf, 7)
    # a restarted broker still reads the batches kept in one (same data area)
    assert len(_arena_data(buf)) == 4096
    buf[8] = 1
    with pytest.raises(LayoutError, match="version 1"):
        _arena_data(buf)


def test_store_rejects_wrong_magic_and_version() -> None:
    buf = memoryview(bytearray(HEADER_SIZE + 5000))
    data = init_store(buf, broker_pid=1)
    assert len(data) == 4096  # largest power of two that fits
    assert len(open_store(buf)) == 4096
    with pytest.raises(LayoutError, match="magic"):
        open_arena(buf, 0)
    buf[8] = 9
    with pytest.raises(LayoutError, match="version 9"):
        open_store(buf)


def test_store_of_version_1_has_no_services_epoch_and_is_refused() -> None:
    buf = memoryview(bytearray(HEADER_SIZE + 4096))
    init_store(buf, broker_pid=1)
    assert STORE_VERSION == 2
    buf[8] = 1
    with pytest.raises(LayoutError, match="version 1"):
        open_store(buf)


def test_services_epoch_is_a_header_word_the_requesters_read() -> None:
    buf = memoryview(bytearray(HEADER_SIZE + 4096))
    init_store(buf, broker_pid=1)
    words = buf[:HEADER_SIZE].cast("Q")  # as a client reads it
    assert words[SERVICES_WORD] == 0
    publish_services_epoch(buf, 41)
    assert words[SERVICES_WORD] == read_word(buf, SERVICES_WORD) == 41
    assert read_word(buf, 5) == 0  # the blocks counter beside it is untouched


def test_counters_use_single_aligned_stores() -> None:
    buf = memoryview(bytearray(HEADER_SIZE))
    write_word(buf, 5, 2**64 - 1)
    assert read_word(buf, 5) == 2**64 - 1


def test_slot_check_refuses_foreign_or_out_of_bounds_regions() -> None:
    data = memoryview(bytearray(4096))
    write_slot(data, 128, client_id=3, region_len=200, batch_no=11)
    assert check_slot(data, 128, 200, 3, 11) is None
    assert "not tagged" in (check_slot(data, 128, 200, 4, 11) or "")
    assert "not tagged" in (check_slot(data, 128, 200, 3, 12) or "")
    assert "not tagged" in (check_slot(data, 0, 200, 3, 11) or "")
    assert "outside" in (check_slot(data, 4000, 200, 3, 11) or "")
    assert "outside" in (check_slot(data, 0, SLOT.size - 1, 3, 11) or "")
