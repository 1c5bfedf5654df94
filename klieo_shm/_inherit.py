"""Sockets a forked child lets go of at once.

A child made by ``fork`` holds a copy of every descriptor of its parent. A
copy of the parent's connection to the broker, or of a direct request link,
keeps that connection open after the parent dies: the broker would not see
the parent go (its claims and leases would wait for their TTL), a requester
would not see its server go (its request would wait for its timeout).

So right after a fork the child replaces each descriptor registered here
with ``/dev/null``: its copy is gone and the descriptor number stays taken,
so the child's objects that still name it close nothing else later. A
descriptor is replaced only if it is still the file that was registered
(device and inode): one closed without :func:`let_go` (a socket the garbage
collector closed) and reused for another file is left alone.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["hold", "let_go"]

_HELD: dict[int, tuple[int, int]] = {}  # fd -> (st_dev, st_ino)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def hold(fd: int) -> None:
    """A child forked from now on lets go of ``fd``."""
    with contextlib.suppress(OSError):
        _HELD[fd] = _identity(fd)


def let_go(fd: int) -> None:
    """Stop holding ``fd``: call it *before* closing ``fd``, so that a fork
    in between leaks the descriptor rather than have the child replace a
    number that was reused meanwhile."""
    _HELD.pop(fd, None)


def _in_child() -> None:
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd, identity in _HELD.items():
            with contextlib.suppress(OSError):
                if _identity(fd) == identity:
                    os.dup2(null, fd)
    finally:
        os.close(null)
    _HELD.clear()


os.register_at_fork(after_in_child=_in_child)
