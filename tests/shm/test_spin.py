"""Spinning on: klieo-shmd --spin-us, asyncio clients on
klieo_shm.spinning_loop, blocking clients with ?spin_us= -- the same
results as without, and nobody spins while idle."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from shm_helpers import SMALL_ARGS

import klieo_shm
import klieo_shm.sync
from klieo_shm import Job
from klieo_shm.daemon import spawn_daemon

WAIT = 30.0


@pytest.fixture
def spinning(sock: str) -> Iterator[psutil.Process]:
    with spawn_daemon(sock, *SMALL_ARGS, "--spin-us", "100") as proc:
        yield psutil.Process(proc.pid)


def _echo(data: bytes) -> bytes:
    return data[::-1]


def test_an_asyncio_client_on_a_spinning_loop(spinning: psutil.Process, sock: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, klieo_shm.SpinningEventLoop)
        bus = await klieo_shm.connect(f"shm://{sock}")
        assert loop.spin_selector.conditions == 1  # the client spins while it awaits
        try:
            rev = await bus.kv.put("b", "k", b"one")
            assert await bus.kv.cas("b", "k", b"two", expected=rev) == rev + 1
            entry = await bus.kv.get("b", "k")
            assert entry is not None
            assert entry.value == b"two"
            stream = await bus.pubsub.subscribe("s.>", "d")
            for i in range(100):
                await bus.pubsub.publish(f"s.{i}", b"%d" % i)
            for i in range(100):
                msg = await asyncio.wait_for(stream.next(), WAIT)
                assert msg.payload == b"%d" % i
                await msg.ack()
            await stream.close()
            service = await bus.requests.serve("echo", _echo)
            assert await bus.requests.request("echo", b"abc", WAIT) == b"cba"
            await service.stop()
        finally:
            await bus.close()
        assert loop.spin_selector.conditions == 0  # closing the bus undoes it

    with asyncio.Runner(loop_factory=klieo_shm.spinning_loop) as runner:
        runner.run(main())


def test_waiting_at_the_broker_on_purpose_does_not_spin(
    spinning: psutil.Process, sock: str
) -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, klieo_shm.SpinningEventLoop)
        with pytest.raises(klieo_shm.Closed):  # a failed connect registers nothing
            await klieo_shm.connect(f"shm://{sock}.absent")
        assert loop.spin_selector.conditions == 0
        bus = await klieo_shm.connect(f"shm://{sock}")
        try:
            watch = await bus.kv.watch("b")  # its next changes wait at the broker
            claim = asyncio.ensure_future(bus.jobs.claim("q", "w1", 30.0))  # empty queue
            await bus.kv.put("b", "k", b"v")
            change = await asyncio.wait_for(watch.next(), WAIT)
            assert change.value == b"v"
            before = time.process_time()
            await asyncio.sleep(0.4)  # spinning would burn up to 0.3 s of it
            used = time.process_time() - before
            claim.cancel()
            await watch.close()
        finally:
            await bus.close()
        return used

    loop = klieo_shm.SpinningEventLoop(300_000)
    try:
        assert loop.run_until_complete(main()) < 0.1
    finally:
        loop.close()


def test_a_blocking_client_with_spin_us(spinning: psutil.Process, sock: str) -> None:
    with klieo_shm.sync.connect(f"shm://{sock}?spin_us=200") as bus:
        assert bus.kv.put("b", "k", b"v") == 1
        entry = bus.kv.get("b", "k")
        assert entry is not None
        assert entry.value == b"v"
        job_id = bus.jobs.enqueue("q", Job(b"work"))
        claimed = bus.jobs.claim("q", "w1", 30.0)
        assert claimed is not None
        assert claimed.id == job_id
        assert claimed.payload == b"work"
        claimed.ack()


def test_an_idle_spinning_broker_sleeps(spinning: psutil.Process, sock: str) -> None:
    with klieo_shm.sync.connect(f"shm://{sock}") as bus:
        for i in range(200):
            bus.kv.put("b", "k", b"%d" % i)
        before = spinning.cpu_times()
        time.sleep(1.0)  # a window to measure CPU in, not a wait for an event
        after = spinning.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.3  # it spins after each wake-up (ticks: 50/s), not all the time


def test_a_bad_spin_us_is_refused(sock: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "klieo_shm.daemon", "--socket", sock, "--spin-us", "-1"],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert b"spin_us" in out.stderr
