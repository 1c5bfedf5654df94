"""Micro-benchmark: KvTableReader.get of a 100 B value from a read-only mapping.

The table lives in a named POSIX segment (unique name, unlinked on exit),
mapped read-write for the writer and PROT_READ for the reader, as a client
maps it. Prints p50/p99 of one get, timed in batches (``--batch`` gets per
clock read, to keep the clock's own cost out) and one call at a time (clock
overhead subtracted). ``--writer`` adds a forked process rewriting the same
key as fast as it can, to show the cost of seqlock retries.

    .venv/bin/python tools/bench/kv_table_micro.py [--samples N] [--writer] [--check]

Target (DESIGN.md, issue 4): p50 <= 3 us. ``--check`` exits 1 when missed.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import statistics
import sys
import time
from multiprocessing.synchronize import Event

import posix_ipc

from klieo_shm.layout.kv_table import KvTableReader, required_size
from klieo_shm.layout.kv_table_writer import KvTableWriter

TARGET_P50_US = 3.0
INDEX_SLOTS = 1 << 15
VALUE_BYTES = 8 << 20
FILLER_KEYS = 10_000


def _rewrite(writer: KvTableWriter, stop: Event) -> None:
    rev = 2
    while not stop.is_set():
        for _ in range(200):
            rev += 1
            writer.put("bench", "key", bytes([rev & 0xFF]) * 100, rev)


def _percentiles(samples_ns: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 / 1000, p99 / 1000


def measure(reader: KvTableReader, samples: int, batch: int) -> dict[str, tuple[float, float]]:
    get = reader.get
    clock = time.perf_counter_ns
    for _ in range(10_000):  # warm up the name cache and the CPU caches
        get("bench", "key")
    batched: list[float] = []
    for _ in range(samples):
        t0 = clock()
        for _ in range(batch):
            get("bench", "key")
        batched.append((clock() - t0) / batch)
    empty: list[int] = []
    for _ in range(samples):
        t0 = clock()
        empty.append(clock() - t0)
    overhead = statistics.median(empty)
    single: list[float] = []
    for _ in range(samples):
        t0 = clock()
        get("bench", "key")
        single.append(clock() - t0 - overhead)
    return {f"batched x{batch}": _percentiles(batched), "single call": _percentiles(single)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--writer", action="store_true", help="rewrite the key concurrently")
    parser.add_argument("--check", action="store_true", help="exit 1 if p50 misses the target")
    args = parser.parse_args(argv)

    size = required_size(INDEX_SLOTS, VALUE_BYTES)
    name = f"/klieo-kvbench-{os.getpid()}"
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
    child = None
    stop = None
    try:
        rw = mmap.mmap(shm.fd, size)
        ro = mmap.mmap(shm.fd, size, prot=mmap.PROT_READ)
        shm.close_fd()
        writer = KvTableWriter(memoryview(rw), create=True, index_slots=INDEX_SLOTS)
        for i in range(FILLER_KEYS):
            writer.put(f"filler{i % 50}", f"k.{i}", os.urandom(100), i + 1)
        writer.put("bench", "key", b"v" * 100, 1)
        reader = KvTableReader(memoryview(ro))
        assert reader.get("bench", "key") == (b"v" * 100, 1)
        if args.writer:
            ctx = multiprocessing.get_context("fork")
            stop = ctx.Event()
            child = ctx.Process(target=_rewrite, args=(writer, stop), daemon=True)
            child.start()
        results = measure(reader, args.samples, args.batch)
        reader.close()
        writer.close()
        ro.close()
        rw.close()
    finally:
        if child is not None and stop is not None:
            stop.set()
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join()
        shm.unlink()

    mode = "with a concurrent writer" if args.writer else "idle writer"
    print(f"KvTableReader.get, 100 B value, read-only mapping, {FILLER_KEYS} other keys, {mode}")
    for label, (p50, p99) in results.items():
        print(f"  {label:<14} p50 {p50:6.2f} us   p99 {p99:6.2f} us")
    p50 = results[f"batched x{args.batch}"][0]
    met = p50 <= TARGET_P50_US
    print(f"  target p50 <= {TARGET_P50_US} us: {'met' if met else 'NOT met'}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
