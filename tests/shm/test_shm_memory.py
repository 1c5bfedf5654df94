"""The broker's own memory stays bounded while messages wait: 100,000 pending
64-byte messages cost it well under 100 MiB beyond its segments."""

from __future__ import annotations

import asyncio

import klieo_shm
from klieo_shm.daemon import spawn_daemon
from klieo_shm.shm import ShmPubsub

MiB = 1 << 20


def _anon_rss(pid: int) -> int:
    """Private (non-segment) resident bytes of ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc status")


async def _fill(sock: str, n: int) -> None:
    bus = await klieo_shm.connect(f"shm://{sock}")
    pubsub = bus.pubsub
    assert isinstance(pubsub, ShmPubsub)
    stream = await pubsub.subscribe("mem.>", "waiting")
    await stream.close()  # the durable stays; its messages wait
    for _ in range(n // 5000):
        await asyncio.gather(*[pubsub.publish_async("mem.x", b"m" * 64) for _ in range(5000)])
    await bus.close()


def test_hundred_thousand_pending_messages_cost_the_broker_under_100_mib(sock: str) -> None:
    with spawn_daemon(sock) as proc:
        before = _anon_rss(proc.pid)
        asyncio.run(_fill(sock, 100_000))
        grown = _anon_rss(proc.pid) - before
        assert grown < 100 * MiB, f"broker grew by {grown / MiB:.1f} MiB"
