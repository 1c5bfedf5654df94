"""Several processes on one broker: competing consumers, kill -9 of holders,
durables without members, request/reply failures, large payloads."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest

import klieo_shm
from klieo_shm.daemon import spawn_daemon

WORKER = os.path.join(os.path.dirname(__file__), "shm_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(klieo_shm.__file__)))


@pytest.fixture
def broker(sock: str) -> Iterator[str]:
    """A klieo-shmd process with default limits."""
    with spawn_daemon(sock):
        yield sock


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise AssertionError(f"worker {self.proc.pid} exited ({await self.proc.wait()})")
        return raw.decode().strip()

    async def expect(self, word: str) -> list[str]:
        parts = (await self.line()).split()
        assert parts[0] == word, parts
        return parts[1:]


@contextlib.asynccontextmanager
async def worker(sock: str, *args: str) -> AsyncIterator[Worker]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, WORKER, sock, *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        yield Worker(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_three_processes_share_a_durable_each_message_acked_once(broker: str) -> None:
    n = 3000
    async with contextlib.AsyncExitStack() as stack:
        members = [
            await stack.enter_async_context(worker(broker, "consume", "pool", "cp.>", str(n)))
            for _ in range(3)
        ]
        for m in members:
            await m.expect("ready")
        bus = await klieo_shm.connect(f"shm://{broker}")
        await asyncio.gather(*[bus.pubsub.publish("cp.job", b"%d" % i) for i in range(n)])
        acked: list[int] = []

        async def collect(m: Worker) -> None:
            while True:
                try:
                    parts = await m.expect("acked")
                except AssertionError:
                    return  # the worker exited (only after n acks: never here)
                acked.append(int(parts[0]))
                if len(acked) == n:
                    return

        tasks = [asyncio.ensure_future(collect(m)) for m in members]
        while len(acked) < n:
            done, _ = await asyncio.wait(tasks, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            assert done, f"only {len(acked)} of {n} acked"
            tasks = [t for t in tasks if not t.done()]
            if not tasks:
                break
        for t in tasks:
            t.cancel()
        assert len(acked) == n
        assert len(set(acked)) == n
        await bus.close()


async def test_messages_held_by_a_killed_member_reach_another_within_a_second(
    broker: str,
) -> None:
    bus = await klieo_shm.connect(f"shm://{broker}")
    async with worker(broker, "hold", "kill9", "k9.x", "5") as holder:
        await holder.expect("ready")
        for i in range(5):
            await bus.pubsub.publish("k9.x", b"%d" % i)
        held = [int(s) for s in await holder.expect("held")]
        other = await bus.pubsub.subscribe("k9.x", "kill9")
        holder.proc.send_signal(signal.SIGKILL)
        await holder.proc.wait()
        start = time.monotonic()
        got = []
        for _ in range(5):
            msg = await other.next(timeout=10)
            assert msg is not None
            assert msg.delivery_count == 2
            got.append(msg.seq)
            await msg.ack()
        assert time.monotonic() - start < 1.0
        assert sorted(got) == sorted(held)
    await bus.close()


async def test_durable_without_members_keeps_messages_for_the_next_process(broker: str) -> None:
    async with worker(broker, "consume", "later", "keep.x", "0") as first:
        await first.expect("ready")
        assert await first.proc.wait() == 0
    bus = await klieo_shm.connect(f"shm://{broker}")
    for i in range(10):
        await bus.pubsub.publish("keep.x", b"%d" % i)
    await bus.close()
    async with worker(broker, "consume", "later", "keep.x", "10") as second:
        await second.expect("ready")
        seqs = [int((await second.expect("acked"))[0]) for _ in range(10)]
        assert len(set(seqs)) == 10
        assert await second.proc.wait() == 0


async def test_request_with_no_server_raises_not_found_at_once(broker: str) -> None:
    bus = await klieo_shm.connect(f"shm://{broker}")
    start = time.monotonic()
    with pytest.raises(klieo_shm.NotFound):
        await bus.requests.request("nobody.home", b"x", 30.0)
    assert time.monotonic() - start < 5.0
    await bus.close()


async def test_server_killed_mid_request_fails_the_request_at_once(broker: str) -> None:
    bus = await klieo_shm.connect(f"shm://{broker}")
    async with worker(broker, "serve", "svc.hang", "hang") as server:
        await server.expect("ready")
        pending = asyncio.ensure_future(bus.requests.request("svc.hang", b"x", 60.0))
        await server.expect("got")
        server.proc.send_signal(signal.SIGKILL)
        with pytest.raises((klieo_shm.Closed, klieo_shm.NotFound)):
            await asyncio.wait_for(pending, 10)
    await bus.close()


async def test_handler_exception_reaches_the_requester(broker: str) -> None:
    bus = await klieo_shm.connect(f"shm://{broker}")
    async with worker(broker, "serve", "svc.raise", "raise") as server:
        await server.expect("ready")
        with pytest.raises(klieo_shm.HandlerError) as caught:
            await bus.requests.request("svc.raise", b"x", 30.0)
        assert "boom from handler" in str(caught.value)
        assert caught.value.type_name == "ValueError"
    await bus.close()


async def test_eight_mib_payload_arrives_intact_in_another_process(broker: str) -> None:
    payload = os.urandom(8 << 20)
    async with worker(broker, "consume", "big", "big.x", "1") as reader:
        await reader.expect("ready")
        bus = await klieo_shm.connect(f"shm://{broker}")
        await bus.pubsub.publish("big.x", payload)
        _, digest = await reader.expect("acked")
        assert digest == hashlib.sha256(payload).hexdigest()
        await bus.close()
