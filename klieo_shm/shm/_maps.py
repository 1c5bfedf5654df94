"""Mapping the broker's segments from a client.

Lifetimes (LMDB style): a ``Mapping.view`` is valid until :meth:`close`.
Bytes read from the store view (or from another client's arena, for a kept
batch) are valid only until the delivery they belong to is acked -- the
client copies them out before handing a ``Msg`` to user code, so user code
never sees shared memory.
"""

from __future__ import annotations

import mmap
import os

import posix_ipc

from .._unmap import unmap

__all__ = ["Mapping"]


class Mapping:
    """A segment mapped read-only (the store) or read-write (the arena):
    ``name`` is a POSIX shared-memory name (``/name``) or, when it is not of
    that form, the path of a file (a store in a state directory)."""

    __slots__ = ("_map", "name", "view")

    def __init__(self, name: str, size: int, *, writable: bool) -> None:
        self.name = name
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        if name.count("/") != 1 or not name.startswith("/"):  # not "/name": a path
            fd = os.open(name, os.O_RDWR if writable else os.O_RDONLY)
            try:
                have = os.fstat(fd).st_size
                if have < size:
                    raise ValueError(f"file {name} has {have} bytes, expected {size}")
                self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
            finally:
                os.close(fd)
        else:
            shm = posix_ipc.SharedMemory(name, 0, read_only=not writable)
            try:
                if shm.size < size:
                    raise ValueError(f"segment {name} has {shm.size} bytes, expected {size}")
                self._map = mmap.mmap(shm.fd, size, mmap.MAP_SHARED, prot)
            finally:
                shm.close_fd()
        self.view = memoryview(self._map)

    @property
    def mm(self) -> mmap.mmap:
        """The mapping itself: slicing it copies bytes out in one step, half
        the cost of ``bytes(view[a:b])`` for small payloads."""
        return self._map

    def close(self) -> None:
        """Unmap. Idempotent; a still-referenced slice keeps it mapped until GC."""
        view, self.view = self.view, memoryview(b"")
        unmap(view, self._map)
