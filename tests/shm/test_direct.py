"""Direct request links: requests that go from requester to server without
the broker, and what keeps them right (the services epoch, fallbacks, fork,
peer credentials)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator

import pytest
from shm_helpers import RawClient, bus_on
from test_shm_cross_process import worker

import klieo_shm
from klieo_shm.daemon import DaemonProcess
from klieo_shm.protocol import Call, Connection, Reply, Request, Result
from klieo_shm.shm import direct_of

WAIT = 30.0


def tagger(tag: bytes):  # type: ignore[no-untyped-def]
    async def handler(payload: bytes) -> bytes:
        return tag

    return handler


@contextlib.asynccontextmanager
async def paused(broker: DaemonProcess) -> AsyncIterator[None]:
    """The broker process stopped (SIGSTOP) for the block's duration."""
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        broker.proc.send_signal(signal.SIGCONT)


async def test_a_request_reaches_its_server_while_the_broker_is_stopped(
    broker: DaemonProcess, sock: str
) -> None:
    async with bus_on(sock) as server, bus_on(sock) as client:
        await server.requests.serve("d.echo", lambda p: p.upper())
        assert await client.requests.request("d.echo", b"first", WAIT) == b"FIRST"
        async with paused(broker):
            # through the broker this would wait for the timeout
            assert await client.requests.request("d.echo", b"direct", WAIT) == b"DIRECT"


async def test_without_direct_links_a_request_needs_the_broker(
    broker: DaemonProcess, sock: str
) -> None:
    """The counterpart of the test above: direct=0 on the requester."""
    async with bus_on(sock) as server, bus_on(f"{sock}?direct=0") as client:
        await server.requests.serve("d.echo", lambda p: p)
        assert await client.requests.request("d.echo", b"x", WAIT) == b"x"
        async with paused(broker):
            with pytest.raises(klieo_shm.Timeout):
                await client.requests.request("d.echo", b"x", 0.5)


async def test_a_direct_request_in_flight_outlives_a_broker_restart(
    broker: DaemonProcess, sock: str
) -> None:
    async with bus_on(sock) as server, bus_on(sock) as client:
        got, release = asyncio.Event(), asyncio.Event()

        async def slow(payload: bytes) -> bytes:
            got.set()
            await release.wait()
            return b"late but here"

        await server.requests.serve("d.slow", slow)
        pending = asyncio.ensure_future(client.requests.request("d.slow", b"x", WAIT))
        await asyncio.wait_for(got.wait(), WAIT)
        broker.kill()
        release.set()
        assert await asyncio.wait_for(pending, WAIT) == b"late but here"


async def test_a_server_that_starts_serving_gets_a_share_and_one_that_stops_gets_none(
    daemon: str,
) -> None:
    async with bus_on(daemon) as a, bus_on(daemon) as b, bus_on(daemon) as client:
        svc_a = await a.requests.serve("d.share", tagger(b"a"))
        assert await client.requests.request("d.share", b"x", WAIT) == b"a"  # route kept
        svc_b = await b.requests.serve("d.share", tagger(b"b"))
        tags = [await client.requests.request("d.share", b"x", WAIT) for _ in range(20)]
        assert set(tags) == {b"a", b"b"}
        await svc_a.stop()
        tags = [await client.requests.request("d.share", b"x", WAIT) for _ in range(10)]
        assert set(tags) == {b"b"}
        await svc_b.stop()
        with pytest.raises(klieo_shm.NotFound):
            await client.requests.request("d.share", b"x", WAIT)


async def test_servers_with_and_without_direct_links_share_requests(daemon: str) -> None:
    async with (
        bus_on(daemon) as a,
        bus_on(f"{daemon}?direct=0") as b,
        bus_on(daemon) as client,
    ):
        await a.requests.serve("d.mixed", tagger(b"a"))
        await b.requests.serve("d.mixed", tagger(b"b"))
        tags = [await client.requests.request("d.mixed", b"x", WAIT) for _ in range(20)]
        assert set(tags) == {b"a", b"b"}


async def test_a_stale_route_sends_the_request_through_the_broker(daemon: str) -> None:
    """A server asked for a subject it does not serve (its requester's route
    is stale) answers NotFound before running anything; the requester asks
    the broker, which knows the real server."""
    async with (
        bus_on(daemon) as a,
        bus_on(f"{daemon}?direct=0") as b,
        bus_on(daemon) as client,
    ):
        await a.requests.serve("d.one", tagger(b"a"))
        await b.requests.serve("d.two", tagger(b"b"))
        assert await client.requests.request("d.one", b"x", WAIT) == b"a"
        routes = client.requests._routes  # type: ignore[attr-defined]
        routes["d.two"] = routes["d.one"]  # as if d.two had moved away from a
        assert await client.requests.request("d.two", b"x", WAIT) == b"b"
        assert "d.two" not in routes  # asked the broker again: dropped


async def test_a_dead_server_fails_requests_at_once_while_its_forked_child_lives(
    daemon: str,
) -> None:
    async with bus_on(daemon) as client, worker(daemon, "serve-fork", "d.fork") as server:
        said: dict[str, list[str]] = {}
        try:
            for _ in range(2):  # "ready" and "child <pid>", in either order
                word, *rest = (await server.line()).split()
                said[word] = rest
            assert await client.requests.request("d.fork", b"x", WAIT) == b"x"  # a link is open
            server.proc.send_signal(signal.SIGKILL)
            await server.proc.wait()
            # the child still holds copies of the server's sockets
            with pytest.raises((klieo_shm.NotFound, klieo_shm.Closed)):
                await client.requests.request("d.fork", b"x", WAIT)
        finally:
            if "child" in said:
                os.kill(int(said["child"][0]), signal.SIGKILL)


async def _ask(address: str, frame: bytes, user: int | None) -> bytes:
    """What the server at ``address`` answers to ``frame`` before closing,
    asked from a forked process of uid ``user`` (``None``: ours)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: plain socket calls only, then out
        code = 1
        try:
            os.close(r)
            if user is not None:
                os.setuid(user)
            got = b""  # EOF or reset: refused
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                peer.settimeout(WAIT)
                peer.connect(address)
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    peer.sendall(frame)
                    got = peer.recv(1 << 16)
            os.write(w, got)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        return await asyncio.to_thread(os.read, r, 1 << 16)
    finally:
        os.close(r)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a peer as another uid")
async def test_a_server_answers_peers_of_its_own_uid_only(daemon: str) -> None:
    async with bus_on(daemon) as server:
        await server.requests.serve("d.uid", lambda p: p)
        address = server.requests._listener.address  # type: ignore[attr-defined]
        frame = Connection.direct("client", 1 << 20).send(Request(1, "d.uid", b"hi", 5.0))
        ours = await _ask(address, frame, None)
        theirs = await _ask(address, frame, 65534)
    conn = Connection.direct("client", 1 << 20)
    conn.receive_data(ours)
    assert conn.next_event() == Reply(1, b"hi")
    assert theirs == b""


# --- the broker's side: serve's address, route, the epoch ---------------------
def _call(raw: RawClient, call_id: int, method: str, **args: object) -> Result:
    raw.send(Call(call_id, method, dict(args)))
    (answer,) = raw.read(1)
    assert isinstance(answer, Result)
    return answer


def test_route_names_every_server_with_its_address_or_none_without_one(daemon: str) -> None:
    with RawClient(daemon) as a, RawClient(daemon) as b, RawClient(daemon) as asker:
        for raw in (a, b, asker):
            raw.hello()
        missing = _call(asker, 1, "route", subject="r.x")
        assert missing.error_type == "NotFound"

        assert _call(a, 1, "serve", subject="r.x", svc_id=1, direct="\0addr-a").error_type == ""
        first = _call(asker, 2, "route", subject="r.x").value
        assert first["direct"] == [["\0addr-a", os.getuid()]]

        assert _call(b, 1, "serve", subject="r.x", svc_id=7).error_type == ""  # no address
        second = _call(asker, 3, "route", subject="r.x").value
        assert second["direct"] is None  # through the broker, then
        assert second["epoch"] > first["epoch"]

        assert _call(b, 2, "unserve", svc_id=7).error_type == ""
        third = _call(asker, 4, "route", subject="r.x").value
        assert third["direct"] == [["\0addr-a", os.getuid()]]
        assert third["epoch"] > second["epoch"]


@pytest.mark.parametrize("address", ["not-abstract", "\0" + "x" * 107, 42])
def test_serve_refuses_an_address_that_is_not_an_abstract_socket(
    daemon: str, address: object
) -> None:
    with RawClient(daemon) as raw:
        raw.hello()
        answer = _call(raw, 1, "serve", subject="r.bad", svc_id=1, direct=address)
        assert answer.error_type == "InvalidArgument"
        assert _call(raw, 2, "route", subject="r.bad").error_type == "NotFound"


async def test_the_services_epoch_in_the_store_moves_with_every_change(daemon: str) -> None:
    from klieo_shm.layout import SERVICES_WORD

    async with bus_on(daemon) as server, bus_on(daemon) as watcher:
        words = watcher.requests._client.store_words  # type: ignore[attr-defined]
        seen = [words[SERVICES_WORD]]
        service = await server.requests.serve("e.x", lambda p: p)
        seen.append(words[SERVICES_WORD])
        await service.stop()
        seen.append(words[SERVICES_WORD])
        assert seen[0] < seen[1] < seen[2]


@pytest.mark.parametrize(
    ("url", "direct"),
    [("shm:///s", True), ("shm:///s?direct=1", True), ("shm:///s?direct=0", False)],
)
def test_the_url_turns_direct_links_off_with_direct_0(url: str, direct: bool) -> None:
    assert direct_of(url) is direct


def test_the_url_refuses_other_values_of_direct() -> None:
    with pytest.raises(klieo_shm.InvalidArgument):
        direct_of("shm:///s?direct=yes")


async def test_a_request_whose_route_the_broker_does_not_answer_times_out(
    broker: DaemonProcess, sock: str
) -> None:
    async with bus_on(sock) as server, bus_on(sock) as client:
        await server.requests.serve("d.unasked", lambda p: p)
        async with paused(broker):
            # no route kept for it yet: asking the broker counts in the timeout
            with pytest.raises(klieo_shm.Timeout):
                await asyncio.wait_for(client.requests.request("d.unasked", b"x", 0.5), WAIT)


async def test_services_started_at_once_share_one_listener(daemon: str) -> None:
    async with bus_on(daemon) as server:
        await asyncio.gather(*(server.requests.serve(f"d.at-once.{i}", echo) for i in range(3)))
        with RawClient(daemon) as asker:
            asker.hello()
            addresses = {
                _call(asker, i + 1, "route", subject=f"d.at-once.{i}").value["direct"][0][0]
                for i in range(3)
            }
    assert len(addresses) == 1


async def test_a_huge_error_message_reaches_the_requester_cut_and_the_link_goes_on(
    daemon: str,
) -> None:
    async with bus_on(daemon) as server, bus_on(daemon) as client:

        def handler(payload: bytes) -> bytes:
            if payload == b"fail":
                raise ValueError("!" * (4 << 20))  # over any frame
            return payload

        await server.requests.serve("d.huge", handler)
        with pytest.raises(klieo_shm.HandlerError) as caught:
            await client.requests.request("d.huge", b"fail", WAIT)
        assert 0 < str(caught.value).count("!") <= 4096
        assert await client.requests.request("d.huge", b"fine", WAIT) == b"fine"


def echo(payload: bytes) -> bytes:
    return payload


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a listener as another uid")
async def test_a_requester_does_not_talk_to_a_listener_of_another_uid(daemon: str) -> None:
    """An abstract name is anybody's once its owner let it go: a listener of
    another uid that took it gets no request, and the request goes through
    the broker."""
    name = f"klieo-direct-rogue.{os.getpid()}.{id(daemon)}"
    forged = Connection.direct("server", 1 << 20).send(Reply(1, b"forged"))
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the rogue: another uid, answers whatever comes with a forged reply
        code = 1
        try:
            os.close(ready_r)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
                listener.bind("\0" + name)
                listener.listen(8)
                os.write(ready_w, b"!")
                listener.settimeout(WAIT)
                peer, _ = listener.accept()
                with peer, contextlib.suppress(OSError):
                    peer.recv(1 << 16)
                    peer.sendall(forged)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        assert await asyncio.to_thread(os.read, ready_r, 1) == b"!"
        async with (
            bus_on(f"{daemon}?direct=0") as server,
            bus_on(daemon) as a,
            bus_on(daemon) as client,
        ):
            await server.requests.serve("d.rogue", tagger(b"real"))
            await a.requests.serve("d.known", echo)
            assert await client.requests.request("d.known", b"x", WAIT) == b"x"  # epoch kept
            routes = client.requests._routes  # type: ignore[attr-defined]
            routes["d.rogue"] = ["\0" + name]  # as if the broker had named it
            assert await client.requests.request("d.rogue", b"x", WAIT) == b"real"
    finally:
        os.close(ready_r)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(os.waitpid, pid, 0)


async def test_a_thousand_requests_keep_their_own_replies_while_a_server_is_killed(
    daemon: str,
) -> None:
    """Two server processes, many requests in flight, one server SIGKILLed:
    every request gets its own payload back, or Closed/NotFound at once for
    those the dead one held; none hangs, none gets another's reply."""
    async with (
        bus_on(daemon) as client,
        worker(daemon, "serve", "d.pair", "echo") as a,
        worker(daemon, "serve", "d.pair", "echo") as b,
    ):
        await a.expect("ready")
        await b.expect("ready")

        async def one(i: int) -> bool | None:
            payload = b"request %d" % i
            try:
                return await client.requests.request("d.pair", payload, WAIT) == payload
            except (klieo_shm.Closed, klieo_shm.NotFound):
                return None  # it was on the killed server

        assert all(await asyncio.gather(*(one(i) for i in range(200))))
        pending = [asyncio.ensure_future(one(i)) for i in range(200, 1200)]
        a.proc.kill()
        during = await asyncio.gather(*pending)
        after = await asyncio.gather(*(one(i) for i in range(1200, 1400)))
    assert False not in during + after
    assert during.count(True) >= 1
    assert after.count(True) >= 1
