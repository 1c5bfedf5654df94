"""``klieo_shm.testing.noop_bus`` behaves as klieo-core's doctests show."""

from __future__ import annotations

import pytest

import klieo_shm
from klieo_shm import Job
from klieo_shm.testing import noop_bus


async def test_noop_publish_succeeds():
    pubsub, _, _, _ = noop_bus()

    await pubsub.publish("subject.demo", b"hi", {})


async def test_noop_request_raises_not_found():
    _, request_reply, _, _ = noop_bus()

    with pytest.raises(klieo_shm.NotFound):
        await request_reply.request("svc.add", b"1", 1.0)


async def test_noop_put_returns_1_then_counts_up():
    _, _, kv, _ = noop_bus()

    assert await kv.put("bucket", "key", b"v") == 1
    assert await kv.put("bucket", "key", b"v") == 2
    assert await kv.cas("bucket", "other", b"v", None) == 3


async def test_noop_enqueue_returns_noop_0_then_counts_up():
    _, _, _, jobs = noop_bus()

    assert await jobs.enqueue("queue.work", Job(b"payload")) == "noop-0"
    assert await jobs.enqueue("queue.work", Job(b"payload")) == "noop-1"


async def test_noop_reads_find_nothing():
    _, _, kv, jobs = noop_bus()

    assert await kv.get("bucket", "key") is None
    assert await kv.keys("bucket") == []
    assert await jobs.claim("queue.work", "w", 1.0) is None
    assert await jobs.dead_letters("queue.work") == []
    stats = await jobs.stats("queue.work")
    assert (stats.ready, stats.delayed, stats.claimed, stats.dead) == (0, 0, 0, 0)


async def test_noop_streams_are_silent_and_end_on_close():
    pubsub, _, kv, _ = noop_bus()
    stream = await pubsub.subscribe("a.>", "d")
    watch = await kv.watch("bucket")

    with pytest.raises(klieo_shm.Timeout):
        await stream.next(timeout=0.01)
    await stream.close()
    await watch.close()

    assert await stream.next() is None
    assert await watch.next() is None


async def test_noop_bus_still_validates_names():
    pubsub, _, kv, jobs = noop_bus()

    with pytest.raises(klieo_shm.InvalidArgument):
        await pubsub.publish("a..b", b"x")
    with pytest.raises(klieo_shm.InvalidArgument):
        await kv.put("bad bucket", "k", b"v")
    with pytest.raises(klieo_shm.InvalidArgument):
        await jobs.enqueue("bad queue", Job(b"x"))


async def test_noop_interfaces_are_the_public_interfaces():
    pubsub, requests, kv, jobs = noop_bus()

    assert isinstance(pubsub, klieo_shm.Pubsub)
    assert isinstance(requests, klieo_shm.RequestReply)
    assert isinstance(kv, klieo_shm.KvStore)
    assert isinstance(jobs, klieo_shm.JobQueue)


async def test_noop_lease_and_service_work_as_context_managers():
    _, requests, kv, _ = noop_bus()

    async with await kv.lease("bucket", "key", 1.0) as lease:
        await lease.heartbeat()
    async with await requests.serve("svc.x", lambda p: p):
        pass
