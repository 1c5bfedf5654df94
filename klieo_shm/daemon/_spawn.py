"""Run ``klieo-shmd`` as a child process (tests, tools, the pytest plugin).

``spawn_daemon(socket_path, ...)`` starts the broker, waits until its socket
accepts clients (the daemon writes a byte to an inherited pipe when it does,
so there is no polling and no sleep), and on exit stops it with SIGTERM and
checks that it left no segment behind.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

from ._config import segment_prefix
from ._segments import SHM_DIR, remove_stale

__all__ = ["DaemonError", "leftover_segments", "spawn_daemon"]


class DaemonError(RuntimeError):
    """The daemon did not start, did not stop, or left segments behind."""


def leftover_segments(socket_path: str) -> list[str]:
    """Segments in /dev/shm that a broker on ``socket_path`` would own."""
    prefix = segment_prefix(socket_path) + "-"
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def spawn_daemon(
    socket_path: str, *args: str, start_timeout: float = 30.0, stop_timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A running ``klieo-shmd`` on ``socket_path`` with extra ``args``."""
    rfd, wfd = os.pipe()
    cmd = [sys.executable, "-m", "klieo_shm.daemon", "--socket", socket_path]
    cmd += ["--ready-fd", str(wfd), "--log-level", os.environ.get("KLIEO_SHMD_LOG", "WARNING")]
    proc = subprocess.Popen([*cmd, *args], pass_fds=(wfd,))
    os.close(wfd)
    try:
        ready, _, _ = select.select([rfd], [], [], start_timeout)
        if not ready or not os.read(rfd, 1):
            proc.kill()
            proc.wait()
            raise DaemonError(f"klieo-shmd on {socket_path} did not start (exit {proc.returncode})")
    finally:
        os.close(rfd)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise DaemonError(f"klieo-shmd on {socket_path} ignored SIGTERM") from None
        left = leftover_segments(socket_path)
        if left:
            remove_stale(segment_prefix(socket_path))
        if proc.returncode != 0:
            raise DaemonError(
                f"klieo-shmd on {socket_path} exited with {proc.returncode} (segments: {left})"
            )
        if left:
            raise DaemonError(f"klieo-shmd on {socket_path} left segments: {left}")
