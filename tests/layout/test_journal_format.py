"""The journal file format: records read back whole, a torn or corrupt tail
ends the journal there and is never misread, other versions are refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from klieo_shm.layout.journal import (
    JOURNAL_HEADER,
    JOURNAL_MAGIC,
    JOURNAL_VERSION,
    JournalFormatError,
    check_journal_header,
    frame_parts,
    frame_record,
    journal_header,
    scan_records,
)

Rec = tuple[bytes, bytes]
bodies = st.lists(
    st.tuples(st.binary(min_size=1, max_size=300), st.binary(min_size=0, max_size=300)),
    min_size=0,
    max_size=20,
)


def journal(records: list[Rec]) -> bytes:
    return journal_header() + b"".join(frame_record(meta, tail) for meta, tail in records)


def read(data: bytes) -> list[Rec]:
    return [(bytes(meta), bytes(tail)) for _, meta, tail in scan_records(data)]


@given(bodies)
def test_every_record_reads_back_meta_and_tail(records: list[Rec]) -> None:
    data = journal(records)
    check_journal_header(data)
    assert read(data) == records
    parts = b"".join(b"".join(frame_parts(m, memoryview(t))) for m, t in records)
    assert journal_header() + parts == data  # written from buffers or whole: same bytes


@given(bodies, st.data())
def test_a_cut_anywhere_yields_exactly_the_whole_records_before_it(
    records: list[Rec], data: st.DataObject
) -> None:
    full = journal(records)
    cut = data.draw(st.integers(JOURNAL_HEADER.size, len(full)))
    ends = [end for end, _, _ in scan_records(full)]
    whole = [e for e in ends if e <= cut]
    assert [end for end, _, _ in scan_records(full[:cut])] == whole
    assert read(full[:cut]) == records[: len(whole)]


@given(
    st.lists(
        st.tuples(st.binary(min_size=1, max_size=100), st.binary(max_size=100)),
        min_size=1,
        max_size=10,
    ),
    st.data(),
)
def test_a_flipped_byte_ends_the_journal_at_that_record(
    records: list[Rec], data: st.DataObject
) -> None:
    full = bytearray(journal(records))
    ends = [JOURNAL_HEADER.size] + [end for end, _, _ in scan_records(bytes(full))]
    i = data.draw(st.integers(0, len(records) - 1))
    start, end = ends[i], ends[i + 1]
    pos = data.draw(st.integers(start + 4, end - 1))  # crc, meta length or body
    full[pos] ^= 0xFF
    assert read(bytes(full)) == records[:i]


def test_other_versions_and_foreign_files_are_refused_naming_both_versions() -> None:
    later = JOURNAL_VERSION + 1
    with pytest.raises(JournalFormatError, match=rf"version {later}.*versions 4, 5, 6 only"):
        check_journal_header(JOURNAL_HEADER.pack(JOURNAL_MAGIC, later, 0))
    with pytest.raises(JournalFormatError, match="not a klieo journal"):
        check_journal_header(b"SQLite format 3\x00" + bytes(8))
    with pytest.raises(JournalFormatError, match="cut short"):
        check_journal_header(journal_header()[:5])


def test_the_versions_before_kept_batches_and_claim_columns_are_still_read() -> None:
    check_journal_header(JOURNAL_HEADER.pack(JOURNAL_MAGIC, 4, 0))
    check_journal_header(JOURNAL_HEADER.pack(JOURNAL_MAGIC, 5, 0))
    check_journal_header(journal_header())


def test_zeros_after_the_last_record_are_not_a_record() -> None:
    data = journal([(b"\x91\x01", b"")]) + bytes(64)  # a filesystem's zero-filled tail
    assert read(data) == [(b"\x91\x01", b"")]
