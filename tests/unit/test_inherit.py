"""Sockets a forked child lets go of (klieo_shm._inherit)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from klieo_shm._inherit import hold, let_go


def _in_child(check) -> int:  # type: ignore[no-untyped-def]
    """Fork; run ``check()`` (a bool) in the child; its exit code."""
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = bool(check())
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_lets_go_of_a_held_socket() -> None:
    a, b = socket.socketpair()
    try:
        hold(a.fileno())
        # in the child the number names /dev/null, not the socket
        assert _in_child(lambda: stat.S_ISCHR(os.fstat(a.fileno()).st_mode)) == 0
        assert stat.S_ISSOCK(os.fstat(a.fileno()).st_mode)  # the parent keeps it
        let_go(a.fileno())
        assert _in_child(lambda: stat.S_ISSOCK(os.fstat(a.fileno()).st_mode)) == 0
    finally:
        let_go(a.fileno())
        a.close()
        b.close()


def test_a_number_reused_for_another_file_is_left_alone(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    fd = a.fileno()
    hold(fd)
    a.close()  # closed without let_go, as by the garbage collector
    b.close()
    path = tmp_path / "out"
    other = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        if other != fd:
            os.dup2(other, fd)  # the number now names a file
            os.close(other)
        assert _in_child(lambda: os.write(fd, b"from the child") == 14) == 0
    finally:
        let_go(fd)
        os.close(fd)
    assert path.read_bytes() == b"from the child"
