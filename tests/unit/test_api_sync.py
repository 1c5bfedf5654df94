"""The blocking flavour and its portal, over a fake backend built from
``noop_bus`` (no real backend needed)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import types
from collections.abc import Iterator

import pytest

import klieo_shm
import klieo_shm.memory
import klieo_shm.sync
from klieo_shm import _bus
from klieo_shm._portal import Portal
from klieo_shm.testing import noop_bus


async def _open_fake_bus(url: str) -> klieo_shm.Bus:
    pubsub, requests, kv, jobs = noop_bus()

    async def close() -> None:
        return None

    return klieo_shm.Bus(url, pubsub, requests, kv, jobs, close)


@pytest.fixture
def fake_url(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("klieo_fake_backend")
    module.open_bus = _open_fake_bus  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "klieo_fake_backend", module)
    monkeypatch.setitem(_bus._BACKENDS, "fake", "klieo_fake_backend")
    return "fake://"


@pytest.fixture
def bus(fake_url: str) -> Iterator[klieo_shm.sync.Bus]:
    with klieo_shm.sync.connect(fake_url) as bus:
        yield bus


def test_sync_connect_gives_the_four_blocking_interfaces(bus):
    pubsub, requests, kv, jobs = bus

    assert isinstance(pubsub, klieo_shm.sync.Pubsub)
    assert isinstance(requests, klieo_shm.sync.RequestReply)
    assert isinstance(kv, klieo_shm.sync.KvStore)
    assert isinstance(jobs, klieo_shm.sync.JobQueue)
    assert (bus.pubsub, bus.requests, bus.kv, bus.jobs) == (pubsub, requests, kv, jobs)
    assert bus.url == "fake://"


def test_sync_calls_return_the_async_results(bus):
    bus.pubsub.publish("a.b", b"x")

    assert bus.kv.put("b", "k", b"v") == 1
    assert bus.kv.put("b", "k", b"v") == 2
    assert bus.jobs.enqueue("q", klieo_shm.Job(b"p")) == "noop-0"
    assert bus.kv.get("b", "k") is None


def test_sync_calls_raise_the_async_errors(bus):
    with pytest.raises(klieo_shm.NotFound):
        bus.requests.request("svc.x", b"x", 1.0)
    with pytest.raises(klieo_shm.InvalidArgument):
        bus.pubsub.publish("a..b", b"x")


def test_sync_stream_next_times_out_and_ends_on_close(bus):
    stream = bus.pubsub.subscribe("a.>", "d")
    assert isinstance(stream, klieo_shm.sync.MsgStream)

    with pytest.raises(klieo_shm.Timeout):
        stream.next(timeout=0.05)
    stream.close()

    assert stream.next() is None
    assert list(stream) == []


def test_sync_lease_context_releases_and_exposes_fields(bus):
    with bus.kv.lease("b", "k", 5.0) as lease:
        assert isinstance(lease, klieo_shm.sync.Lease)
        assert (lease.bucket, lease.key, lease.ttl, lease.token) == ("b", "k", 5.0, 1)
        lease.heartbeat()


def test_sync_service_is_a_context_manager(bus):
    with bus.requests.serve("svc.x", lambda payload: payload) as service:
        assert service.subject == "svc.x"


def test_sync_bus_close_is_idempotent_and_stops_its_thread(fake_url):
    before = threading.active_count()
    bus = klieo_shm.sync.connect(fake_url)
    assert threading.active_count() == before + 1

    bus.close()
    bus.close()

    assert threading.active_count() == before


def test_sync_operations_on_a_closed_bus_raise_closed(fake_url):
    bus = klieo_shm.sync.connect(fake_url)
    bus.close()

    with pytest.raises(klieo_shm.Closed):
        bus.kv.get("b", "k")


def test_sync_connect_refuses_an_unknown_scheme():
    with pytest.raises(klieo_shm.InvalidArgument, match="scheme"):
        klieo_shm.sync.connect("carrier-pigeon://x")


def test_portal_call_returns_and_raises():
    portal = Portal()
    try:

        async def answer() -> int:
            await asyncio.sleep(0)
            return 42

        async def fail() -> None:
            raise klieo_shm.Conflict("no", expected=1, current=2)

        assert portal.call(answer()) == 42
        with pytest.raises(klieo_shm.Conflict) as caught:
            portal.call(fail())
        assert caught.value.current == 2
    finally:
        portal.stop()
        portal.stop()


def test_portal_call_from_its_own_loop_raises_instead_of_deadlocking():
    portal = Portal()
    try:

        async def reenter() -> None:
            async def inner() -> None:
                return None

            portal.call(inner())

        with pytest.raises(RuntimeError, match="own event loop"):
            portal.call(reenter())
    finally:
        portal.stop()


def test_portal_runs_calls_from_many_threads():
    portal = Portal()
    results: list[int] = []

    async def square(n: int) -> int:
        await asyncio.sleep(0.01)
        return n * n

    try:
        threads = [
            threading.Thread(target=lambda n=n: results.append(portal.call(square(n))))
            for n in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        portal.stop()

    assert sorted(results) == sorted(n * n for n in range(8))


def _in_child(check) -> int:
    """Run ``check()`` in a forked child; its exit status (0: passed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            check()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_portal_is_refused_in_a_forked_child():
    portal = Portal()

    async def nothing() -> None:
        return None

    def check() -> None:
        assert not portal.owned_here
        coro = nothing()
        try:
            portal.call(coro)
        except klieo_shm.Closed:
            return
        raise AssertionError("a parent's portal worked in the child")

    try:
        assert _in_child(check) == 0
    finally:
        portal.stop()


def test_sync_bus_reconnects_in_a_forked_child_and_parent_handles_are_refused(bus):
    stream = bus.pubsub.subscribe("a.>", "d")

    def check() -> None:
        assert bus.kv.put("b", "k", b"v") == 1  # a fresh connection in the child
        try:
            stream.next(timeout=0.01)
        except klieo_shm.Closed:
            return
        raise AssertionError("a parent's stream worked in the child")

    assert _in_child(check) == 0


def test_sync_ack_many_refuses_a_job_of_another_bus_and_acks_none() -> None:
    url = f"memory://sync-ack-many-{os.getpid()}-{threading.get_ident()}"
    try:
        with klieo_shm.sync.connect(url) as one, klieo_shm.sync.connect(url) as two:
            for i in range(2):
                one.jobs.enqueue("q", klieo_shm.Job(b"%d" % i))
            mine = one.jobs.claim_many("q", "w", 30.0, 1)
            theirs = two.jobs.claim_many("q", "w", 30.0, 1)
            assert len(mine) == len(theirs) == 1

            with pytest.raises(klieo_shm.InvalidArgument):
                one.jobs.ack_many(mine + theirs)

            assert not mine[0].resolved
            one.jobs.ack_many(mine)
            two.jobs.ack_many(theirs)
            assert one.jobs.stats("q").claimed == 0
    finally:
        klieo_shm.memory.forget(url.removeprefix("memory://"))


def test_sync_pubsub_ack_many_refuses_a_message_of_another_bus_and_acks_none() -> None:
    url = f"memory://sync-msg-ack-many-{os.getpid()}-{threading.get_ident()}"
    try:
        with klieo_shm.sync.connect(url) as one, klieo_shm.sync.connect(url) as two:
            mine_stream = one.pubsub.subscribe("s.a", "da")
            their_stream = two.pubsub.subscribe("s.b", "db")
            one.pubsub.publish("s.a", b"a")
            one.pubsub.publish("s.b", b"b")
            mine = mine_stream.next_many(10, timeout=10.0)
            theirs = their_stream.next_many(10, timeout=10.0)
            assert [m.payload for m in mine + theirs] == [b"a", b"b"]

            with pytest.raises(klieo_shm.InvalidArgument):
                one.pubsub.ack_many(mine + theirs)

            assert not mine[0].resolved
            assert not theirs[0].resolved
            one.pubsub.ack_many(mine)
            two.pubsub.ack_many(theirs)
            assert mine[0].resolved
            assert theirs[0].resolved
    finally:
        klieo_shm.memory.forget(url.removeprefix("memory://"))


def test_sync_next_many_after_close_returns_an_empty_list() -> None:
    url = f"memory://sync-next-many-{os.getpid()}-{threading.get_ident()}"
    try:
        bus = klieo_shm.sync.connect(url)
        stream = bus.pubsub.subscribe("s.a", "da")
        bus.close()

        assert stream.next_many(10, timeout=1.0) == []
    finally:
        klieo_shm.memory.forget(url.removeprefix("memory://"))
