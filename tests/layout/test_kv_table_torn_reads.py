"""Cross-process: a reader never sees a torn or mixed value while the writer
rewrites the same key with values of varying length as fast as it can.

The table lives in an anonymous shared mapping created before the fork, so
nothing is left in /dev/shm. The writer reuses replaced space at once
(``grace_s=0``) in a small value space: the worst case for readers.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import random
import struct
import time
from multiprocessing.synchronize import Event

from klieo_shm.layout.kv_table import KvTableReader, KvTableRetired, required_size
from klieo_shm.layout.kv_table_writer import KvTableWriter, copy_into

_HEAD = struct.Struct("<IQ")  # declared length, revision
READ_SECONDS = 1.5
MAX_READS = 300_000


def make_value(rev: int, length: int) -> bytes:
    """length, revision, a byte pattern of the revision, an 8-byte checksum."""
    body = _HEAD.pack(length, rev) + bytes([rev & 0xFF]) * (length - _HEAD.size - 8)
    return body + hashlib.blake2b(body, digest_size=8).digest()


def check_value(value: bytes, rev: int) -> None:
    length, embedded_rev = _HEAD.unpack_from(value)
    assert len(value) == length, f"length {len(value)} != declared {length}"
    assert embedded_rev == rev, f"value of revision {embedded_rev} returned with {rev}"
    body, digest = value[:-8], value[-8:]
    assert hashlib.blake2b(body, digest_size=8).digest() == digest, "checksum mismatch"
    assert body[_HEAD.size :] == bytes([rev & 0xFF]) * (length - _HEAD.size - 8)


def _write_until_stopped(writer: KvTableWriter, stop: Event, first_rev: int) -> None:
    rng = random.Random(first_rev)
    rev = first_rev
    while not stop.is_set():
        for _ in range(100):
            rev += 1
            writer.put("t", "hot", make_value(rev, rng.randrange(_HEAD.size + 8, 3000)), rev)
            if rev % 7 == 0:  # churn a neighbour so the free space shifts around
                writer.put("t", f"cold{rev % 5}", make_value(rev, rng.randrange(20, 600)), rev)


def test_reader_never_sees_a_torn_value_across_processes() -> None:
    size = required_size(64, 16 * 1024)
    mm = mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS: shared with the forked child
    try:
        writer = KvTableWriter(memoryview(mm), create=True, index_slots=64, grace_s=0.0)
        writer.put("t", "hot", make_value(1, 100), 1)
        ctx = multiprocessing.get_context("fork")
        stop = ctx.Event()
        child = ctx.Process(target=_write_until_stopped, args=(writer, stop, 1), daemon=True)
        child.start()
        writer.close()  # the parent only reads from here on
        reader = KvTableReader(memoryview(mm).toreadonly())
        try:
            seen: set[int] = set()
            lengths: set[int] = set()
            reads = 0
            deadline = time.monotonic() + READ_SECONDS
            while reads < MAX_READS and time.monotonic() < deadline:
                got = reader.get("t", "hot")
                assert got is not None
                value, rev = got
                check_value(value, rev)
                seen.add(rev)
                lengths.add(len(value))
                reads += 1
            assert child.is_alive(), "the writer died"
        finally:
            reader.close()
            stop.set()
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join()
        assert child.exitcode == 0
        # The run overlapped the writer: many revisions of many lengths seen.
        assert len(seen) > 10
        assert len(lengths) > 10
    finally:
        mm.close()


def _write_then_grow(a: KvTableWriter, b_mm: mmap.mmap, writes: int) -> None:
    rng = random.Random(7)
    rev = 1
    for _ in range(writes):
        rev += 1
        a.put("t", "hot", make_value(rev, rng.randrange(_HEAD.size + 8, 1500)), rev)
    b = KvTableWriter(memoryview(b_mm), create=True, index_slots=128, generation=2, grace_s=0.0)
    copy_into(a, b)
    a.retire(b.generation)
    for _ in range(writes):
        rev += 1
        b.put("t", "hot", make_value(rev, rng.randrange(_HEAD.size + 8, 1500)), rev)


def test_reads_never_go_back_across_a_growth() -> None:
    a_mm = mmap.mmap(-1, required_size(64, 16 * 1024))
    b_mm = mmap.mmap(-1, required_size(128, 64 * 1024))
    writes = 20_000
    try:
        a = KvTableWriter(memoryview(a_mm), create=True, index_slots=64, grace_s=0.0)
        a.put("t", "hot", make_value(1, 100), 1)
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=_write_then_grow, args=(a, b_mm, writes), daemon=True)
        child.start()
        a.close()
        reader = KvTableReader(memoryview(a_mm).toreadonly())
        last = 0
        remaps = 0
        try:
            deadline = time.monotonic() + 60
            while last < 2 * writes + 1 and time.monotonic() < deadline:
                try:
                    got = reader.get("t", "hot")
                except KvTableRetired:
                    reader.close()
                    reader = KvTableReader(memoryview(b_mm).toreadonly())
                    remaps += 1
                    continue
                assert got is not None
                value, rev = got
                check_value(value, rev)
                assert rev >= last, f"revision went back from {last} to {rev}"
                last = rev
        finally:
            reader.close()
            child.join(timeout=60)
            if child.is_alive():
                child.kill()
                child.join()
        assert child.exitcode == 0
        assert remaps == 1
        assert last == 2 * writes + 1
    finally:
        a_mm.close()
        b_mm.close()
