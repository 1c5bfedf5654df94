"""The credentials of a Unix socket's peer (``SO_PEERCRED``, Linux)."""

from __future__ import annotations

import socket
import struct
from typing import Any, Final

__all__ = ["peer_credentials"]

_CRED: Final = struct.Struct("3i")


def peer_credentials(sock: socket.socket | Any) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of the connected
    Unix socket ``sock``, as the kernel recorded them; ``OSError`` if it
    cannot tell."""
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return pid, uid, gid
