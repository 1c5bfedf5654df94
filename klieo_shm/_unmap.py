"""Releasing a memory mapping that other views may still hold."""

from __future__ import annotations

import mmap

__all__ = ["unmap"]


def unmap(view: memoryview, mapping: mmap.mmap) -> None:
    """Release ``view`` and close ``mapping``. If a slice of it is still
    alive somewhere, the mapping stays until the GC drops that slice."""
    try:
        view.release()
        mapping.close()
    except BufferError:
        pass
