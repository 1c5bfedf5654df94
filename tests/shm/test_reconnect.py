"""The shm client rides through a broker restart: kill -9 of klieo-shmd, a
new one on the same socket, and the client reconnects by itself -- streams,
services and watches resume; calls in flight fail with ``Closed`` at once;
calls made meanwhile wait; after the reconnect window it gives up."""

from __future__ import annotations

import asyncio

import pytest

import klieo_shm
import klieo_shm.sync
from klieo_shm import Job
from klieo_shm.daemon import DaemonProcess
from klieo_shm.worker import WorkerOptions, run_worker

WAIT = 30.0


async def _kill(broker: DaemonProcess, bus: klieo_shm.Bus) -> None:
    """SIGKILL the broker, then make sure ``bus`` noticed: a call made before
    the client read the EOF is in flight at the loss and fails with Closed
    (an operation made after that waits for the reconnection instead)."""
    broker.kill()
    with pytest.raises(klieo_shm.Closed) as caught:
        await asyncio.wait_for(bus.kv.keys("probe"), WAIT)
    assert getattr(caught.value, "transient", False)


async def _restart(broker: DaemonProcess, bus: klieo_shm.Bus) -> None:
    await _kill(broker, bus)
    broker.start()


async def _next_payload(stream: klieo_shm.MsgStream, want: bytes) -> klieo_shm.Msg:
    """The next message carrying ``want`` (a restarted broker with a journal
    may redeliver earlier ones first: at-least-once)."""
    while True:
        msg = await stream.next(timeout=WAIT)
        assert msg is not None
        if msg.payload == want:
            return msg
        await msg.ack()


async def test_stream_resumes_and_stale_acks_are_no_ops(broker: DaemonProcess, sock: str) -> None:
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        stream = await bus.pubsub.subscribe("rc.>", "d", ack_wait=60.0)
        await bus.pubsub.publish("rc.x", b"before")
        stale = await _next_payload(stream, b"before")  # not acked before the kill
        await _restart(broker, bus)
        await bus.pubsub.publish("rc.x", b"after")  # waits for the reconnection
        msg = await _next_payload(stream, b"after")
        assert msg.subject == "rc.x"
        await msg.ack()
        # acking a delivery of the old connection sends nothing (its id means
        # nothing now): the connection stays healthy
        await stale.ack()
        await bus.pubsub.publish("rc.y", b"still-fine")
        late = await _next_payload(stream, b"still-fine")
        await late.ack()
        await stream.close()


async def test_service_answers_after_restart(broker: DaemonProcess, sock: str) -> None:
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        svc = await bus.requests.serve("rc.echo", lambda p: b"echo:" + p)
        assert await bus.requests.request("rc.echo", b"1", WAIT) == b"echo:1"
        await _restart(broker, bus)
        assert await bus.requests.request("rc.echo", b"2", WAIT) == b"echo:2"
        await svc.stop()


async def test_call_in_flight_raises_closed_not_a_hang(broker: DaemonProcess, sock: str) -> None:
    # direct=0: the request goes through the broker (a direct one outlives
    # it: test_direct)
    async with await klieo_shm.connect(f"shm://{sock}?direct=0") as bus:
        got, release = asyncio.Event(), asyncio.Event()

        async def hang(payload: bytes) -> bytes:
            got.set()
            await release.wait()
            return b"late"

        await bus.requests.serve("rc.hang", hang)
        pending = asyncio.ensure_future(bus.requests.request("rc.hang", b"x", 60.0))
        await asyncio.wait_for(got.wait(), WAIT)
        broker.kill()
        with pytest.raises(klieo_shm.Closed) as caught:
            await asyncio.wait_for(pending, 10)
        assert sock in str(caught.value)
        assert "may or may not have taken effect" in str(caught.value)
        release.set()
        broker.start()
        # the bus carries on
        assert await bus.kv.put("rc", "k", b"v") >= 1


async def test_operation_made_while_the_broker_is_down_completes_once_it_is_back(
    broker: DaemonProcess, sock: str
) -> None:
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        stream = await bus.pubsub.subscribe("down.x", "d")
        await _kill(broker, bus)
        put = asyncio.ensure_future(bus.kv.put("down", "k", b"v"))
        pub = asyncio.ensure_future(bus.pubsub.publish("down.x", b"while-down"))
        # the client retries in the background while the broker starts
        await asyncio.to_thread(broker.start)
        rev = await asyncio.wait_for(put, WAIT)
        await asyncio.wait_for(pub, WAIT)
        entry = await bus.kv.get("down", "k")
        assert entry is not None
        assert (entry.value, entry.revision) == (b"v", rev)
        msg = await _next_payload(stream, b"while-down")
        await msg.ack()
        await stream.close()


async def test_gives_up_after_the_reconnect_window(broker: DaemonProcess, sock: str) -> None:
    bus = await klieo_shm.connect(f"shm://{sock}?reconnect_timeout=0.5")
    stream = await bus.pubsub.subscribe("gone.x", "d")
    await _kill(broker, bus)
    waiting = asyncio.ensure_future(bus.kv.put("gone", "k", b"v"))  # waits, then gives up
    with pytest.raises(klieo_shm.Closed) as caught:
        await asyncio.wait_for(stream.next(), WAIT)
    assert sock in str(caught.value)
    with pytest.raises(klieo_shm.Closed) as caught:
        await asyncio.wait_for(waiting, WAIT)
    assert sock in str(caught.value)
    assert not getattr(caught.value, "transient", False)
    with pytest.raises(klieo_shm.Closed):
        await bus.pubsub.publish("gone.x", b"x")
    with pytest.raises(klieo_shm.Closed):
        await bus.jobs.claim("gone", "w", 10.0)
    await bus.close()
    broker.start()  # removes the killed broker's segments


async def test_watch_resumes_without_duplicates(broker: DaemonProcess, sock: str) -> None:
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        watch = await bus.kv.watch("wcfg")
        first = await bus.kv.put("wcfg", "a", b"1")
        change = await watch.next(timeout=WAIT)
        assert change is not None
        assert (change.key, change.revision) == ("a", first)
        await _restart(broker, bus)
        later = await bus.kv.put("wcfg", "b", b"2")
        change = await watch.next(timeout=WAIT)
        assert change is not None
        # no replay of what was seen before (a broker that kept its state
        # sends "a" again as a current value: dropped, its revision was seen)
        assert (change.key, change.value, change.revision) == ("b", b"2", later)
        await watch.close()


async def test_worker_rides_through_a_restart(broker: DaemonProcess, sock: str) -> None:
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        started, release, second = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def handler(payload: bytes) -> None:
            if payload == b"one":
                started.set()
                await release.wait()
            else:
                second.set()

        stop = asyncio.Event()
        opts = WorkerOptions(lease_ttl=30.0)
        worker = asyncio.ensure_future(run_worker(bus, "rq", handler, options=opts, stop=stop))
        await bus.jobs.enqueue("rq", Job(b"one"))
        await asyncio.wait_for(started.wait(), WAIT)
        await _restart(broker, bus)
        release.set()  # its ack goes to the new broker (accepted, or a lost claim)
        await bus.jobs.enqueue("rq", Job(b"two"))
        await asyncio.wait_for(second.wait(), WAIT)
        stop.set()
        stats = await asyncio.wait_for(worker, WAIT)
        assert stats.acked + stats.lost == 2
        assert stats.acked >= 1


async def test_worker_waiting_for_the_broker_stops_at_once(
    broker: DaemonProcess, sock: str
) -> None:
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        stop = asyncio.Event()
        worker = asyncio.ensure_future(run_worker(bus, "idle", lambda p: None, stop=stop))
        assert await bus.jobs.claim("idle", "probe", 5.0) is None  # the worker is claiming too
        await _kill(broker, bus)
        stop.set()
        stats = await asyncio.wait_for(worker, WAIT)
        assert stats.handled == 0
        broker.start()


def test_blocking_stream_resumes_after_restart(broker: DaemonProcess, sock: str) -> None:
    with klieo_shm.sync.connect(f"shm://{sock}") as bus:
        stream = bus.pubsub.subscribe("sync.x", "d")
        broker.kill()  # the loop thread sees the loss at once, and reconnects
        broker.start()
        try:
            bus.pubsub.publish("sync.x", b"after")  # blocks until reconnected
        except klieo_shm.Closed as exc:  # only if made before the loop thread saw the loss
            if not getattr(exc, "transient", False):
                raise
            bus.pubsub.publish("sync.x", b"after")
        while True:
            msg = stream.next(timeout=WAIT)
            assert msg is not None
            msg.ack()
            if msg.payload == b"after":
                break
        stream.close()
