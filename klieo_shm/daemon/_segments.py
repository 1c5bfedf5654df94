"""Shared memory owned by the broker: named POSIX segments, and files.

Only the broker creates and unlinks segments. Names are
``/<prefix>-<broker pid>.<nonce>-<role>`` (a new nonce at every start); at
start the broker removes every segment of its prefix (it has checked first
that no live broker owns the socket), after recovering from its journal,
which may read kept batches out of the arena segments a dead broker left.
Never ``multiprocessing.shared_memory``: its resource tracker would unlink
segments other processes still use.

A :class:`FileSegment` is the same memory kept in a file of the state
directory (the payload store of a broker with a journal): it outlives the
broker, so a restarted broker finds the payloads its journal names there.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from typing import Final

import posix_ipc

from .._unmap import unmap

__all__ = ["SHM_DIR", "FileSegment", "Segment", "map_readonly", "remove_stale"]

SHM_DIR: Final = "/dev/shm"
log = logging.getLogger("klieo.shmd")


class Segment:
    """A segment the broker created and mapped read-write.

    ``view`` is valid until :meth:`destroy`; after it the broker must not
    touch the memory (clients keep their own mappings until they unmap).
    """

    __slots__ = ("_map", "name", "size", "view")

    def __init__(self, name: str, size: int, mode: int, gid: int | None = None) -> None:
        self.name = name
        self.size = size
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=mode, size=size)
        try:
            if gid is not None:
                os.fchown(shm.fd, -1, gid)
                os.fchmod(shm.fd, mode)
            self._map = mmap.mmap(shm.fd, size)
        except BaseException:
            shm.close_fd()
            posix_ipc.unlink_shared_memory(name)
            raise
        shm.close_fd()
        self.view = memoryview(self._map)

    def destroy(self) -> None:
        """Unlink the name and drop the broker's mapping. Idempotent."""
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory(self.name)
        _unmap(self)

    def rename(self, name: str) -> None:
        """Give the segment another name (``/name``); mappings stay valid.
        Raises ``OSError`` (e.g. the name is taken)."""
        new = SHM_DIR + name
        if os.path.exists(new):
            raise FileExistsError(f"segment {name} exists")
        os.rename(SHM_DIR + self.name, new)
        self.name = name

    def close(self) -> None:
        """The broker is done with the segment: the same as :meth:`destroy`."""
        self.destroy()


class FileSegment:
    """A new file of ``size`` bytes at ``path`` (an absolute path, which is
    also its ``name`` for clients), created exclusively and mapped
    read-write. :meth:`close` unmaps and keeps the file; :meth:`destroy`
    also removes it."""

    __slots__ = ("_fd", "_map", "name", "size", "view")

    def __init__(self, path: str, size: int, mode: int, gid: int | None = None) -> None:
        self.name = path
        self.size = size
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        try:
            if gid is not None:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, mode)  # not narrowed by the umask
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        self._fd = fd
        self.view = memoryview(self._map)

    def release_pages(self, ranges: list[tuple[int, int]]) -> int:
        """Give the memory of the whole pages inside each ``(offset, size)``
        range back to the system (``MADV_REMOVE``: a tmpfs frees them, the
        file reads zeros there); returns the bytes released."""
        page = mmap.PAGESIZE
        done = 0
        for off, size in ranges:
            start = -(-off // page) * page
            end = (off + size) // page * page
            if end > start:
                self._map.madvise(mmap.MADV_REMOVE, start, end - start)
                done += end - start
        return done

    def sync(self) -> None:
        """Write the pages changed through the mapping to the file's disk.
        (``fdatasync`` covers a shared mapping's writes on Linux, and unlike
        ``mmap.flush`` it lets other threads run meanwhile.)"""
        os.fdatasync(self._fd)

    def close(self) -> None:
        """Drop the broker's mapping; the file stays. Idempotent."""
        _unmap(self)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def destroy(self) -> None:
        """Drop the mapping and remove the file. Idempotent."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name)
        self.close()


def _unmap(seg: Segment | FileSegment) -> None:
    view, seg.view = seg.view, memoryview(b"")
    unmap(view, seg._map)


def map_readonly(path: str) -> mmap.mmap:
    """Map the whole file at ``path`` read-only (``OSError`` if it cannot be)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)


def remove_stale(prefix: str, keep: str | None = None) -> list[str]:
    """Unlink every segment whose name starts with ``prefix-`` (but not with
    ``keep``, when given); return them.

    Call only after making sure no live broker uses the prefix.
    """
    removed: list[str] = []
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return removed
    for entry in names:
        if entry.startswith(prefix + "-") and not (keep and entry.startswith(keep)):
            try:
                posix_ipc.unlink_shared_memory("/" + entry)
                removed.append(entry)
            except posix_ipc.ExistentialError:
                pass
    return removed
