"""A nats-server killed (``kill -9``) and restarted on the same store: what
a client was told succeeded is still there, and buses reconnect by themselves."""

from __future__ import annotations

import asyncio

import klieo_shm
from klieo_shm import Job
from klieo_shm.nats.testing import running_server


async def test_acknowledged_writes_survive_a_server_crash_and_buses_reconnect():
    with running_server() as server:
        bus = await klieo_shm.connect(f"{server.url}?prefix=restart")
        try:
            stream = await bus.pubsub.subscribe("s", "d")
            await bus.pubsub.publish("s", b"kept")
            revision = await bus.kv.put("b", "k", b"value")
            job_id = await bus.jobs.enqueue("q", Job(b"job"))

            await asyncio.to_thread(server.stop, kill=True)
            await asyncio.to_thread(server.start)

            msg = await stream.next(timeout=15)
            assert msg.payload == b"kept"
            await msg.ack()
            entry = await bus.kv.get("b", "k")
            assert (entry.value, entry.revision) == (b"value", revision)
            claimed = None
            for _ in range(10):
                claimed = await bus.jobs.claim("q", "w", 30.0)
                if claimed is not None:
                    break
            assert claimed is not None
            assert claimed.id == job_id
            await claimed.ack()
        finally:
            await bus.close()
