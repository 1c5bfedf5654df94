"""The broker's journal: one append-only file of state changes in the state
directory, written before any client hears that a change happened.

Contract:

* every change a client may be told about (a stored publish, an ack, an
  enqueue, a claim, a put...) is appended with :meth:`Journal.append` while
  the broker handles the frame; :meth:`Journal.flush` writes the records with
  one ``write`` and, under ``fsync="always"``, ``fsync``s them. The server
  calls ``flush`` before it writes any answer to a socket, so a client is
  never told of a change the journal does not hold;
* ``fsync="interval"`` syncs at most ``interval`` seconds after a write
  (:meth:`Journal.sync_due`), ``"never"`` leaves it to the kernel. On tmpfs
  (the default state directory) the three are equal: the file survives a
  broker crash, not a reboot;
* :meth:`Journal.rewrite` replaces the file by a snapshot (records that
  rebuild the current state), atomically (a new file, fsync, rename), so the
  journal does not grow without bound;
* one broker per state directory: an exclusive ``flock`` on ``lock``.

Records are msgpack arrays whose first item is one of the ops below, plus
an optional raw tail, which :meth:`Journal.load` appends as the record's last
item (file framing: ``klieo_shm.layout.journal``).

Payloads of published messages are not in the journal: they stay in the
store file of the state directory (``STORE`` names it), and a ``PUBLISH``
record names their region there. The broker reuses a freed region only once
the records that freed it are written (``PubsubState.reclaim``), so the
journal never names a region that was overwritten by a later publish. When
the store lives on a disk rather than a tmpfs, the store's pages are synced
with the journal (:meth:`Journal.sync_with`) and each region carries a
crc32 that recovery checks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgpack

from ..layout.journal import (
    JOURNAL_HEADER,
    JournalFormatError,
    check_journal_header,
    frame_parts,
    journal_header,
    scan_records,
)

__all__ = ["FSYNC_POLICIES", "IOV_MAX", "Journal", "Record", "StateDirError"]

log = logging.getLogger("klieo.shmd")

FSYNC_POLICIES: Final = ("always", "interval", "never")
IOV_MAX: Final = 1024
"""Most buffers one ``writev`` takes (Linux)."""
Record = tuple[list[Any], bytes]
"""A record as a snapshot yields it: its items and its raw tail (or b"")."""
COMPACT_MIN: Final = 64 << 20
"""The journal is rewritten once it is this big and four times its last snapshot."""

# ops (first item of a record body)
SEQ: Final = 1  # [SEQ, last publish sequence]
DURABLE: Final = 2  # [DURABLE, name, pattern, ack_wait]
DURABLE_DEL: Final = 3  # [DURABLE_DEL, name]
# [PUBLISH, first_seq, descs, subjects, routes, route_of, off, span, crc32 or -1,
#  arena]  (the batch's region: span bytes at off in the store's data area, or
#  -- a kept batch -- in the data area of the arena segment named ``arena``)
PUBLISH: Final = 4
DELIVERED: Final = 5  # [DELIVERED, durable, seqs]  each delivered once more
ACKED: Final = 6  # [ACKED, durable, seqs]
COUNTS: Final = 7  # [COUNTS, durable, seqs, counts]  (snapshots)
# [JOB_ADD, queue, [ids], [payloads], [[index, dedup, max_attempts, attempts]...]]
# (the last list names only jobs whose options or attempts are not the defaults)
JOB_ADD: Final = 10
JOB_CLAIM: Final = 11
"""``[JOB_CLAIM, queue, pid, start, ttl, ids, first_token, attempts]``: the
claims' tokens are ``first_token``, ``first_token + 1``... in order;
``attempts`` is one int for all, or a list. (Journal versions 4 and 5:
``[JOB_CLAIM, queue, pid, start, ttl, [[id, token, attempts]...]]``.)"""
JOB_ACK: Final = 12  # [JOB_ACK, queue, [ids]]
JOB_READY: Final = 13  # [JOB_READY, queue, id, attempts, due (wall clock, 0: now)]
JOB_DEAD: Final = 14  # [JOB_DEAD, queue, id, reason, attempts]
JOB_REQUEUE: Final = 15  # [JOB_REQUEUE, queue, id]
JOB_DISCARD: Final = 16  # [JOB_DISCARD, queue, id]
JOB_TOKENS: Final = 17  # [JOB_TOKENS, queue, last token]  (snapshots)
JOB_LETTER: Final = 18  # [JOB_LETTER, queue, id, payload, attempts, reason, dedup, max]
KV_PUT: Final = 20  # [KV_PUT, bucket, key, value, revision]
KV_DEL: Final = 21  # [KV_DEL, bucket, key, revision]
KV_REV: Final = 22  # [KV_REV, bucket, revision]  (snapshots)
LEASE: Final = 23  # [LEASE, bucket, key, token, pid, start, ttl]
LEASE_END: Final = 24  # [LEASE_END, bucket, key, token]
LEASE_TOKEN: Final = 25  # [LEASE_TOKEN, bucket, key, last token]  (snapshots)
STORE: Final = 26  # [STORE, file name in the state directory]  (snapshots, first)
MOVED: Final = 27  # [MOVED, first_seq, off, crc32 or -1]  a kept batch now in the store


OPS: Final = frozenset(
    {SEQ, DURABLE, DURABLE_DEL, PUBLISH, DELIVERED, ACKED, COUNTS}
    | {JOB_ADD, JOB_CLAIM, JOB_ACK, JOB_READY, JOB_DEAD, JOB_REQUEUE, JOB_DISCARD}
    | {JOB_TOKENS, JOB_LETTER, KV_PUT, KV_DEL, KV_REV, LEASE, LEASE_END, LEASE_TOKEN, STORE}
    | {MOVED}
)
"""Every op a record may carry; anything else ends the journal where it stands."""


class StateDirError(RuntimeError):
    """The state directory cannot be used (locked, foreign, other version)."""


class Journal:
    """The open journal of one state directory (see the module docstring)."""

    def __init__(self, directory: str, fsync: str = "interval", interval: float = 1.0) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        self.directory = directory
        self.fsync = fsync
        self.interval = interval
        self.path = os.path.join(directory, "journal")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise StateDirError(
                f"state directory {directory} is in use by another klieo-shmd"
            ) from None
        self._fd = -1
        self._out: list[bytes | memoryview] = []
        self._companion: Callable[[], None] | None = None
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.size = 0
        self.snapshot_size = 0
        self.rewrites = 0
        self._syncer: threading.Thread | None = None
        self._unsynced = False
        self._synced_at = time.monotonic()

    # --- reading ---------------------------------------------------------------
    def load(self) -> list[Any]:
        """The records of the existing journal (none for a new directory).
        A torn or corrupt tail is cut off (and logged); a file of another
        format raises ``StateDirError`` naming both versions."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        try:
            check_journal_header(data[: JOURNAL_HEADER.size])
        except JournalFormatError as exc:
            raise StateDirError(f"state directory {self.directory}: {exc}") from None
        records = []
        end = JOURNAL_HEADER.size
        unpack = msgpack.unpackb
        for stop, meta, tail in scan_records(data):
            try:
                rec = unpack(meta, raw=False, strict_map_key=False)
            except ValueError:
                break  # intact frame, unreadable body: the journal ends here
            if type(rec) is not list or not rec or rec[0] not in OPS:
                break
            if tail:
                rec.append(bytes(tail))
            records.append(rec)
            end = stop
        if end < len(data):
            log.warning(
                "journal %s: ignoring %d bytes after offset %d (a record cut short by a crash)",
                self.path,
                len(data) - end,
                end,
            )
        self.size = end
        return records

    # --- writing ---------------------------------------------------------------
    def rewrite(self, records: Iterable[Record]) -> None:
        """Replace the journal by ``records`` (a snapshot), atomically; the
        journal then stays open for appends. The first rewrite (at start)
        raises ``OSError``; a later one (compaction) that fails stops the
        process, as any failed journal write does (see :meth:`flush`)."""
        try:
            self._rewrite(records)
        except OSError as exc:
            if not self.rewrites:
                raise
            self._fatal("rewrite", exc)

    def _rewrite(self, records: Iterable[Record]) -> None:
        self.flush()
        tmp = self.path + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        size = 0
        try:
            chunk: list[bytes | memoryview] = [journal_header()]
            pending = len(chunk[0])
            pack = self._pack
            for rec, tail in records:
                parts = frame_parts(pack(rec), tail)
                chunk += parts
                pending += len(parts[0]) + len(parts[1]) + len(tail)
                if pending >= 1 << 20 or len(chunk) >= IOV_MAX - 3:
                    size += _write_all(fd, chunk)
                    chunk, pending = [], 0
            size += _write_all(fd, chunk)
            if self.fsync != "never":
                self._fsync(fd)
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.fsync != "never":
            _fsync_dir(self.directory)
        self._wait_for_sync()
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        os.lseek(fd, 0, os.SEEK_END)
        self.size = self.snapshot_size = size
        self.rewrites += 1
        self._unsynced = False

    def append(self, record: list[Any], tail: bytes = b"") -> None:
        """Queue ``record`` and its raw ``tail``; they reach the file at the
        next :meth:`flush`."""
        parts = frame_parts(self._pack(record), tail)
        self._out += parts if tail else parts[:2]

    def sync_with(self, companion: Callable[[], None] | None) -> None:
        """Call ``companion`` (which syncs memory the records name, e.g. the
        store file's pages) before every ``fsync`` of the journal. Under
        ``"always"`` a synced record then never names memory that was not
        synced with it; under ``"interval"`` records written while the sync
        thread runs may reach the disk before their memory (within the
        interval's loss window: the store's crc32s tell recovery)."""
        self._companion = companion

    def _fsync(self, fd: int) -> None:
        if self._companion is not None:
            self._companion()
        os.fsync(fd)

    def flush(self) -> None:
        """Write the queued records (and fsync them under ``"always"``)."""
        out = self._out
        if not out or self._fd < 0:
            return
        self._out = []
        try:
            self.size += _write_all(self._fd, out)
            if self.fsync == "always":
                self._fsync(self._fd)
        except OSError as exc:
            self._fatal("write", exc)
        if self.fsync != "always":
            self._unsynced = True

    def _fatal(self, what: str, exc: OSError) -> None:
        """A journal write failed: stop at once, as a crash would. Carrying
        on would answer clients about changes the journal may not hold, and
        later records would follow a torn one that ends the journal."""
        log.critical("cannot %s the journal in %s: %s; stopping", what, self.directory, exc)
        os._exit(70)

    def _sync(self, fd: int) -> None:
        try:
            self._fsync(fd)
        except OSError as exc:
            self._fatal("sync", exc)

    def sync_due(self, now: float) -> None:
        """Under ``"interval"``: fsync when a write is older than the interval.
        The fsync runs in a thread (it releases the GIL), so a slow disk does
        not stall the broker; one at a time, waited for before the file is
        replaced or closed."""
        if self._unsynced and self.fsync == "interval" and now - self._synced_at >= self.interval:
            if self._syncer is not None and self._syncer.is_alive():
                return  # the previous one is still running: try again next tick
            self._unsynced = False
            self._synced_at = now
            self._syncer = threading.Thread(
                target=self._sync, args=(self._fd,), name="klieo-journal-fsync", daemon=True
            )
            self._syncer.start()

    def _wait_for_sync(self) -> None:
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            syncer.join()

    def wants_compaction(self) -> bool:
        return self.size >= COMPACT_MIN and self.size >= 4 * self.snapshot_size

    def close(self) -> None:
        """Flush, sync and close; the state stays in the directory. Idempotent."""
        if self._fd >= 0:
            try:
                self.flush()
                self._wait_for_sync()
                if self.fsync != "never":
                    self._fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


def _write_all(fd: int, parts: list[bytes | memoryview]) -> int:
    """Write ``parts`` in order, ``IOV_MAX`` buffers per ``writev``; returns
    the bytes written (a short write is finished, never left half done)."""
    total = 0
    for i in range(0, len(parts), IOV_MAX):
        batch = parts[i : i + IOV_MAX] if len(parts) > IOV_MAX else parts
        want = sum(map(len, batch))
        done = os.writev(fd, batch)
        total += want
        if done < want:  # rare: finish the rest buffer by buffer
            rest = memoryview(b"".join(batch))[done:]
            while rest:
                rest = rest[os.write(fd, rest) :]
    return total


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
