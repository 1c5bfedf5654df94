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
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

from ._config import default_state_dir, segment_prefix
from ._segments import SHM_DIR, remove_stale

__all__ = ["DaemonError", "DaemonProcess", "leftover_segments", "spawn_daemon"]


class DaemonError(RuntimeError):
    """The daemon did not start, did not stop, or left segments behind."""


def leftover_segments(socket_path: str) -> list[str]:
    """Segments in /dev/shm that a broker on ``socket_path`` would own."""
    prefix = segment_prefix(socket_path) + "-"
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


class DaemonProcess:
    """A ``klieo-shmd`` child on one socket that can be started, killed and
    started again (restart tests, chaos runs). ``args`` go to every start."""

    def __init__(
        self,
        socket_path: str,
        *args: str,
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.socket_path = socket_path
        self.args = args
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> subprocess.Popen[bytes]:
        """Start the daemon and return once its socket accepts clients (the
        daemon writes a byte to an inherited pipe: no polling)."""
        if self.running:
            raise DaemonError(f"klieo-shmd on {self.socket_path} is already running")
        rfd, wfd = os.pipe()
        cmd = [sys.executable, "-m", "klieo_shm.daemon", "--socket", self.socket_path]
        level = os.environ.get("KLIEO_SHMD_LOG", "WARNING")
        cmd += ["--ready-fd", str(wfd), "--log-level", level, *self.args]
        proc = subprocess.Popen(cmd, pass_fds=(wfd,))
        os.close(wfd)
        try:
            ready, _, _ = select.select([rfd], [], [], self.start_timeout)
            if not ready or not os.read(rfd, 1):
                proc.kill()
                proc.wait()
                raise DaemonError(
                    f"klieo-shmd on {self.socket_path} did not start (exit {proc.returncode})"
                )
        finally:
            os.close(rfd)
        self.proc = proc
        return proc

    def kill(self) -> None:
        """SIGKILL the daemon and reap it (its segments stay until the next
        start on this socket removes them, as after a real crash)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, *, allow_killed: bool = True) -> None:
        """Stop the daemon: SIGTERM if it runs (it must exit 0 within
        ``stop_timeout``); then check that no segment is left, removing any
        a killed daemon left. Raises ``DaemonError`` on any failure (a
        daemon that was SIGKILLed counts as one unless ``allow_killed``)."""
        proc = self.proc
        clean = True
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise DaemonError(f"klieo-shmd on {self.socket_path} ignored SIGTERM") from None
                clean = proc.returncode == 0
            else:
                clean = proc.returncode == 0 or (
                    allow_killed and proc.returncode == -signal.SIGKILL
                )
        left = leftover_segments(self.socket_path)
        if left:
            remove_stale(segment_prefix(self.socket_path))
        if not clean:
            assert proc is not None
            raise DaemonError(
                f"klieo-shmd on {self.socket_path} exited with {proc.returncode} (segments: {left})"
            )
        if left and (proc is None or proc.returncode == 0):
            raise DaemonError(f"klieo-shmd on {self.socket_path} left segments: {left}")

    @property
    def state_dir(self) -> str | None:
        """The state directory the daemon uses (``None``: ``--no-state``)."""
        args = list(self.args)
        if "--no-state" in args:
            return None
        for i, arg in enumerate(args):
            if arg == "--state-dir" and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith("--state-dir="):
                return arg.split("=", 1)[1]
        return default_state_dir(self.socket_path)

    def forget(self) -> None:
        """Remove the state directory (the daemon must not run): a throwaway
        broker's journal would otherwise outlive it."""
        if self.running:
            raise DaemonError(f"klieo-shmd on {self.socket_path} still runs")
        state = self.state_dir
        if state is not None:
            shutil.rmtree(state, ignore_errors=True)

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def spawn_daemon(
    socket_path: str, *args: str, start_timeout: float = 30.0, stop_timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway ``klieo-shmd`` on ``socket_path`` with extra ``args``; on
    exit it is stopped with SIGTERM, must leave no segment behind, and its
    state directory is removed."""
    daemon = DaemonProcess(
        socket_path, *args, start_timeout=start_timeout, stop_timeout=stop_timeout
    )
    proc = daemon.start()
    try:
        yield proc
    finally:
        try:
            daemon.stop(allow_killed=False)
        finally:
            if not daemon.running:
                daemon.forget()
