"""KV across processes on one broker: cas counters, whole values under
rewrites, reads while the broker is stopped, leases of killed and stale
holders."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from kv_worker import value_of

import klieo_shm
from klieo_shm.daemon import spawn_daemon

WORKER = os.path.join(os.path.dirname(__file__), "kv_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(klieo_shm.__file__)))


@pytest.fixture
def broker(sock: str) -> Iterator[subprocess.Popen[bytes]]:
    """A klieo-shmd process with a small first KV table (it grows)."""
    with spawn_daemon(sock, "--kv-size", "64K") as proc:
        yield proc


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def expect(self, word: str, timeout: float = 60.0) -> list[str]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise AssertionError(f"worker {self.proc.pid} exited ({await self.proc.wait()})")
        parts = raw.decode().split()
        assert parts[0] == word, parts
        return parts[1:]

    def tell(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")


@contextlib.asynccontextmanager
async def worker(sock: str, *args: str) -> AsyncIterator[Worker]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        WORKER,
        sock,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        yield Worker(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_four_processes_adding_by_get_and_cas_count_exactly_1000(
    sock: str, broker: subprocess.Popen[bytes]
) -> None:
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        await bus.kv.put("counters", "c", b"0")
        async with contextlib.AsyncExitStack() as stack:
            workers = [
                await stack.enter_async_context(worker(sock, "count", "counters", "c", "250"))
                for _ in range(4)
            ]
            for w in workers:
                await w.expect("ready")
            for w in workers:
                w.tell("go")
            for w in workers:
                await w.expect("done")
                assert await w.proc.wait() == 0

        entry = await bus.kv.get("counters", "c")

    assert entry is not None
    assert entry.value == b"1000"
    assert entry.revision == 1001  # the put, then exactly one cas per increment


async def test_get_never_sees_a_value_not_written_whole(
    sock: str, broker: subprocess.Popen[bytes]
) -> None:
    n = 4000
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        kv = bus.kv
        await kv.put("torn", "k", value_of(0))
        async with worker(sock, "rewrite", "torn", "k", str(n)) as w:
            await w.expect("ready")
            assert (await kv.get("torn", "k")) is not None  # mapped before the writes start
            w.tell("go")
            seen: set[int] = set()
            deadline = time.monotonic() + 120.0
            while time.monotonic() < deadline:
                entry = await kv.get("torn", "k")  # a tight loop: no round trip
                assert entry is not None
                i = int(entry.value[:8])
                assert entry.value == value_of(i), f"value {i} was not read whole"
                seen.add(i)
                if i == n - 1:
                    break
            await w.expect("done")

    assert n - 1 in seen
    assert len(seen) >= 2


async def test_get_answers_while_the_broker_is_stopped(
    sock: str, broker: subprocess.Popen[bytes]
) -> None:
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        kv = bus.kv
        rev = await kv.put("stop", "k", b"before")
        assert await kv.get("stop", "k") == klieo_shm.KvEntry(b"before", rev)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            # A get that needed the broker would wait here until the timeout.
            async with asyncio.timeout(30.0):
                for _ in range(10_000):
                    assert await kv.get("stop", "k") == klieo_shm.KvEntry(b"before", rev)
                    assert await kv.get("stop", "absent") is None
        finally:
            os.kill(broker.pid, signal.SIGCONT)

        later = await kv.put("stop", "k", b"after")

        assert later == rev + 1
        assert await kv.get("stop", "k") == klieo_shm.KvEntry(b"after", later)


async def test_lease_of_a_killed_holder_is_free_within_a_second(
    sock: str, broker: subprocess.Popen[bytes]
) -> None:
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        async with worker(sock, "lease", "locks", "leader", "60") as w:
            (held,) = await w.expect("held")
            with pytest.raises(klieo_shm.Conflict):
                await bus.kv.lease("locks", "leader", 60.0)
            w.proc.kill()
            killed = time.monotonic()
            await w.proc.wait()
            lease = None
            while lease is None and time.monotonic() - killed < 1.0:
                try:
                    lease = await bus.kv.lease("locks", "leader", 60.0)
                except klieo_shm.Conflict:
                    await asyncio.sleep(0.005)  # the broker has not read the EOF yet

        assert lease is not None, "the dead holder's lease was not freed within 1 s"
        assert lease.token > int(held)


async def test_lease_of_a_killed_holder_is_free_while_its_forked_child_lives(
    sock: str, broker: subprocess.Popen[bytes]
) -> None:
    """The child's copy of the holder's connection does not keep it open."""
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        async with worker(sock, "lease-fork", "locks", "leader", "60") as w:
            said: dict[str, int] = {}
            try:
                for _ in range(2):  # "held <token>" and "child <pid>", in either order
                    assert w.proc.stdout is not None
                    word, value = (await asyncio.wait_for(w.proc.stdout.readline(), 60)).split()
                    said[word.decode()] = int(value)
                w.proc.kill()
                await w.proc.wait()
                lease = None
                async with asyncio.timeout(30.0):  # far below the lease's 60 s TTL
                    while lease is None:
                        try:
                            lease = await bus.kv.lease("locks", "leader", 60.0)
                        except klieo_shm.Conflict:
                            await asyncio.sleep(0.005)  # the broker has not read the EOF yet
            finally:
                if "child" in said:
                    os.kill(said["child"], signal.SIGKILL)
        assert lease.token > said["held"]


async def test_stale_holders_heartbeat_after_takeover_raises_conflict(
    sock: str, broker: subprocess.Popen[bytes]
) -> None:
    async with (
        await klieo_shm.connect(f"shm://{sock}") as bus,
        worker(sock, "lease", "locks", "leader", "0.3") as w,
    ):
        (held,) = await w.expect("held")
        deadline = time.monotonic() + 10.0
        while True:  # the holder is alive but silent: its ttl runs out
            try:
                new = await bus.kv.lease("locks", "leader", 60.0)
                break
            except klieo_shm.Conflict:
                assert time.monotonic() < deadline, "the ttl never ran out"
                await asyncio.sleep(0.05)

        w.tell("heartbeat")
        assert await w.expect("conflict") == [held, str(new.token)]
        w.tell("release")
        assert await w.expect("conflict") == [held, str(new.token)]

        with pytest.raises(klieo_shm.Conflict) as caught:  # the new holder keeps it
            await bus.kv.lease("locks", "leader", 60.0)
        assert caught.value.current == new.token
        await new.heartbeat()
