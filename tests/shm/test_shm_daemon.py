"""klieo-shmd as a process: paths, permissions, refusals, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import stat
import subprocess
import sys

import posix_ipc
import pytest
from shm_helpers import RawClient, private_socket, running_broker

import klieo_shm
from klieo_shm.daemon import BrokerConfig, leftover_segments, segment_prefix, spawn_daemon
from klieo_shm.daemon._config import default_state_dir, on_memory_fs


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_socket_dir_socket_and_segments_are_private(daemon: str) -> None:
    assert _mode(os.path.dirname(daemon)) == 0o700
    assert _mode(daemon) == 0o600
    with RawClient(daemon) as client:
        client.hello()  # creates this client's arena
        welcome = client.welcome
        segments = leftover_segments(daemon)
        roles = {name.rsplit("-", 1)[-1] for name in segments}
        assert {"kv1", "a1"} <= roles  # the KV table and this client's arena
        for name in segments:
            assert _mode(f"/dev/shm/{name}") == 0o600
        # the payload store: a file in the state directory, which is private too
        assert welcome.store_name.startswith(default_state_dir(daemon) + "/store.")
        assert _mode(welcome.store_name) == 0o600
        assert _mode(os.path.dirname(welcome.store_name)) == 0o700


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly_leaving_nothing(sock: str, sig: signal.Signals) -> None:
    with spawn_daemon(sock) as proc, RawClient(sock) as client:
        client.hello()
        assert leftover_segments(sock)
        proc.send_signal(sig)
        assert proc.wait(30) == 0
    assert leftover_segments(sock) == []
    assert not os.path.exists(sock)


def test_second_broker_on_a_live_socket_refuses_to_start(daemon: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "klieo_shm.daemon", "--socket", daemon],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert b"already serving" in out.stderr


def test_start_removes_segments_a_dead_broker_left(sock: str) -> None:
    stale = f"/{segment_prefix(sock)}-999999-store"
    posix_ipc.SharedMemory(stale, posix_ipc.O_CREX, size=4096).close_fd()
    with spawn_daemon(sock):
        assert stale[1:] not in leftover_segments(sock)


def test_brokers_on_different_sockets_use_different_prefixes() -> None:
    assert segment_prefix("/tmp/a/k.sock") != segment_prefix("/tmp/b/k.sock")


def test_default_socket_path_follows_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    assert BrokerConfig().socket_path == "/run/user/4242/klieo/klieo.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert BrokerConfig().socket_path == f"/tmp/klieo-{os.getuid()}/klieo.sock"


def test_starts_with_no_arguments_on_the_default_socket() -> None:
    with private_socket() as sock:
        runtime = os.path.dirname(sock)
        expected = os.path.join(runtime, "klieo", "klieo.sock")
        rfd, wfd = os.pipe()
        env = {**os.environ, "XDG_RUNTIME_DIR": runtime}
        proc = subprocess.Popen(
            [sys.executable, "-m", "klieo_shm.daemon", "--ready-fd", str(wfd)],
            env=env,
            pass_fds=(wfd,),
        )
        os.close(wfd)
        try:
            assert select.select([rfd], [], [], 30)[0]
            assert os.read(rfd, 1) == b"1"
            assert os.path.exists(expected)
            assert _mode(os.path.dirname(expected)) == 0o700
        finally:
            os.close(rfd)
            proc.terminate()
            assert proc.wait(30) == 0
            state = default_state_dir(expected)
            assert os.path.isdir(state)  # the default journal, on a tmpfs
            assert on_memory_fs(state)
            shutil.rmtree(state)
        assert leftover_segments(expected) == []


def test_peer_of_another_uid_is_not_allowed(sock: str) -> None:
    from klieo_shm.daemon import BrokerServer

    server = BrokerServer(BrokerConfig(socket_path=sock))
    assert server.allowed(os.getuid(), os.getgid())
    stranger = 4_000_000
    assert not server.allowed(stranger if os.getuid() != stranger else stranger + 1, stranger)


async def test_client_gets_closed_naming_the_socket_when_the_broker_goes_away(sock: str) -> None:
    async with running_broker(sock) as server:
        # no broker comes back within the reconnect window: the client gives up
        bus = await klieo_shm.connect(f"shm://{sock}?reconnect_timeout=0.5")
        stream = await bus.pubsub.subscribe("a.b", "d")
        await server.close()
        with pytest.raises(klieo_shm.Closed) as caught:
            await asyncio.wait_for(stream.next(), 10)
        assert sock in str(caught.value)
        with pytest.raises(klieo_shm.Closed) as caught:
            await bus.pubsub.publish("a.b", b"x")
        assert sock in str(caught.value)
        await bus.close()


async def test_connect_without_a_broker_raises_closed_naming_the_socket(sock: str) -> None:
    with pytest.raises(klieo_shm.Closed) as caught:
        await klieo_shm.connect(f"shm://{sock}")
    assert sock in str(caught.value)


def test_group_option_widens_dir_socket_and_arenas_but_store_stays_read_only(sock: str) -> None:
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    with spawn_daemon(sock, "--group", group), RawClient(sock) as client:
        client.hello()
        welcome = client.welcome
        assert _mode(os.path.dirname(sock)) == 0o750
        assert _mode(sock) == 0o660
        modes = {
            name.rsplit("-", 1)[-1]: _mode(f"/dev/shm/{name}") for name in leftover_segments(sock)
        }
        # clients write their arenas; every segment the broker writes is read-only to them
        assert modes.pop("a1") == 0o660
        assert set(modes.values()) <= {0o640}
        assert _mode(welcome.store_name) == 0o640  # the store file in the state directory
        assert _mode(os.path.dirname(welcome.store_name)) == 0o750


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
def test_peer_of_another_uid_is_refused_even_when_the_socket_is_reachable(daemon: str) -> None:
    os.chmod(os.path.dirname(daemon), 0o755)  # a misconfigured directory
    os.chmod(daemon, 0o777)
    pid = os.fork()
    if pid == 0:  # the child becomes a stranger and tries to connect
        code = 3
        try:
            os.setgid(4242)
            os.setuid(4242)
            with RawClient(daemon) as client:
                events = client.hello()
                refused = [e for e in events if type(e).__name__ == "Error"]
                code = 0 if refused and "uid 4242" in refused[0].message else 1
        except BaseException as exc:
            print("child failed:", repr(exc), file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with RawClient(daemon) as client:  # the owner still gets in
        assert type(client.hello()[0]).__name__ == "Welcome"


def test_a_relative_state_directory_is_made_absolute(sock: str) -> None:
    # clients open the store file in it by path, from their own working directory
    config = BrokerConfig(socket_path=sock, state_dir="relative/state")
    assert config.state_dir == os.path.join(os.getcwd(), "relative", "state")


async def test_a_client_whose_arena_cannot_be_made_gets_a_clear_error_and_others_go_on(
    sock: str,
) -> None:
    """The broker cannot create the next client's arena (here: a segment of
    that name exists already): that client is refused with the cause named;
    the broker and every other client keep working."""
    async with running_broker(sock):
        first = await klieo_shm.connect(f"shm://{sock}")
        welcome = first.pubsub._client._welcome  # type: ignore[attr-defined]
        taken = f"{welcome.arena_prefix}{welcome.client_id + 1}"  # ids are sequential
        squatter = posix_ipc.SharedMemory(taken, posix_ipc.O_CREX, size=4096)
        squatter.close_fd()
        try:
            with pytest.raises(klieo_shm.BusError, match="cannot serve this client"):
                await klieo_shm.connect(f"shm://{sock}")
        finally:
            posix_ipc.unlink_shared_memory(taken)
        third = await klieo_shm.connect(f"shm://{sock}")
        stream = await third.pubsub.subscribe("after.x", "d")
        await first.pubsub.publish("after.x", b"still here")
        got = await stream.next(timeout=10)
        assert got is not None
        assert got.payload == b"still here"
        await third.close()
        await first.close()
