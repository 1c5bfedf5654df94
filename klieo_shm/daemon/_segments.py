"""Named POSIX shared-memory segments owned by the broker.

Only the broker creates and unlinks segments. Names are
``/<prefix>-<broker pid>-<role>``; at start the broker removes every segment
of its prefix (it has checked first that no live broker owns the socket).
Never ``multiprocessing.shared_memory``: its resource tracker would unlink
segments other processes still use.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from typing import Final

import posix_ipc

__all__ = ["SHM_DIR", "Segment", "remove_stale"]

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
        view, self.view = self.view, memoryview(b"")
        try:
            view.release()
            self._map.close()
        except BufferError:  # a slice is still alive somewhere: the GC unmaps it
            pass


def remove_stale(prefix: str) -> list[str]:
    """Unlink every segment whose name starts with ``prefix-``; return them.

    Call only after making sure no live broker uses the prefix.
    """
    removed: list[str] = []
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return removed
    for entry in names:
        if entry.startswith(prefix + "-"):
            try:
                posix_ipc.unlink_shared_memory("/" + entry)
                removed.append(entry)
            except posix_ipc.ExistentialError:
                pass
    return removed
