"""What happens when a process dies without closing its bus (``kill -9``):
NATS cannot tell at once, so each kind of holding comes back by time —
a job within ``job_ack_wait`` (the keep-alive stops), a lease after its TTL,
a pubsub delivery after its ``ack_wait``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

import klieo_shm
from klieo_shm import Job


@pytest.fixture
def holder() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _start(procs: list[subprocess.Popen[str]], url: str, body: str) -> subprocess.Popen[str]:
    code = (
        textwrap.dedent(
            """
        import sys, time
        import klieo_shm.sync
        bus = klieo_shm.sync.connect(sys.argv[1])
        """
        )
        + textwrap.dedent(body)
        + "\nprint('holding', flush=True)\ntime.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc


async def _holding(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    assert line.strip() == "holding"


async def test_a_dead_workers_job_comes_back_within_job_ack_wait(url: str, holder):
    async with await klieo_shm.connect(url) as bus:
        job_id = await bus.jobs.enqueue("q", Job(b"work"))
        proc = _start(holder, url, "assert bus.jobs.claim('q', 'doomed', 30.0) is not None")
        await _holding(proc)

        proc.kill()
        started = time.monotonic()
        claimed = None
        while claimed is None and time.monotonic() - started < 10:
            claimed = await bus.jobs.claim("q", "survivor", 30.0)

        assert claimed is not None
        assert (claimed.id, claimed.attempt) == (job_id, 2)
        assert time.monotonic() - started < 5.0  # far below the 30 s lease_ttl
        await claimed.ack()


async def test_a_dead_holders_lease_is_free_after_its_ttl_with_a_larger_token(url: str, holder):
    proc = _start(holder, url, "lease = bus.kv.lease('locks', 'leader', 1.0)\nprint(lease.token)")
    assert proc.stdout is not None
    dead_token = int(await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30))
    await _holding(proc)
    proc.kill()

    async with await klieo_shm.connect(url) as bus:
        with pytest.raises(klieo_shm.Conflict):
            await bus.kv.lease("locks", "leader", 1.0)
        await asyncio.sleep(1.2)
        lease = await bus.kv.lease("locks", "leader", 5.0)

        assert lease.token > dead_token
        await lease.release()


async def test_a_dead_members_delivery_comes_back_after_ack_wait(url: str, holder):
    async with await klieo_shm.connect(url) as bus:
        stream = await bus.pubsub.subscribe("s", "d", ack_wait=1.5)
        proc = _start(
            holder,
            url,
            "s = bus.pubsub.subscribe('s', 'd', ack_wait=1.5)\nassert s.next(timeout=10)",
        )
        await asyncio.sleep(0.5)  # let the doomed member start pulling first
        await stream.close()
        await bus.pubsub.publish("s", b"m")
        await _holding(proc)
        proc.kill()
        started = time.monotonic()
        stream = await bus.pubsub.subscribe("s", "d")

        msg = await stream.next(timeout=10)

        assert (msg.payload, msg.delivery_count) == (b"m", 2)
        assert time.monotonic() - started < 1.5 + 1.0
        await msg.ack()
