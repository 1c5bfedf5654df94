"""Backpressure: publish waits a bounded time for payload storage, then raises
Full; nothing unacked is dropped; a consumer that never acks stalls no one else."""

from __future__ import annotations

import asyncio

import pytest
from shm_helpers import running_broker

import klieo_shm

KIB = 1024
# 64 KiB payloads take 128 KiB store blocks: a 512 KiB store holds four.
TINY = {
    "max_payload": 64 * KIB,
    "arena_size": 1 << 20,
    "store_size": 512 * KIB,
    "publish_timeout": 0.5,
}


async def test_full_store_makes_publish_wait_then_raise_full(sock: str) -> None:
    async with running_broker(sock, **TINY):
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("bp.x", "keep")
        payloads = [bytes([i]) * (60 * KIB) for i in range(4)]
        for p in payloads:
            await bus.pubsub.publish("bp.x", p)
        with pytest.raises(klieo_shm.Full) as caught:
            await bus.pubsub.publish("bp.x", b"one too many" * 5000)
        assert "payload storage" in str(caught.value)
        # nothing unacked was dropped to make room
        got = [await stream.next(timeout=10) for _ in payloads]
        assert [m.payload for m in got if m is not None] == payloads
        await bus.close()


async def test_publish_waiting_for_room_succeeds_when_an_ack_frees_it(sock: str) -> None:
    options = {**TINY, "publish_timeout": 30.0}
    async with running_broker(sock, **options):
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("bp.y", "keep")
        for i in range(4):
            await bus.pubsub.publish("bp.y", bytes([i]) * (60 * KIB))
        waiting = asyncio.ensure_future(bus.pubsub.publish("bp.y", b"late"))
        first = await stream.next(timeout=10)
        assert first is not None
        assert not waiting.done()
        await first.ack()
        await asyncio.wait_for(waiting, 10)
        rest = [await stream.next(timeout=10) for _ in range(4)]
        assert rest[-1] is not None
        assert rest[-1].payload == b"late"
        await bus.close()


async def test_member_that_never_acks_does_not_stall_the_other_member(sock: str) -> None:
    async with running_broker(sock, max_ack_pending=100, member_window=10):
        bus = await klieo_shm.connect(f"shm://{sock}")
        stuck = await bus.pubsub.subscribe("bp.z", "group")
        worker = await bus.pubsub.subscribe("bp.z", "group")
        await asyncio.gather(*[bus.pubsub.publish("bp.z", b"%d" % i) for i in range(300)])
        got = 0
        while got < 290:
            msg = await worker.next(timeout=10)
            assert msg is not None
            await msg.ack()
            got += 1
        held = [await stuck.next(timeout=10) for _ in range(10)]
        assert all(m is not None for m in held)
        await bus.close()


async def test_durable_that_never_acks_does_not_stall_another_durable(sock: str) -> None:
    async with running_broker(sock, max_ack_pending=50, member_window=50):
        bus = await klieo_shm.connect(f"shm://{sock}")
        lazy = await bus.pubsub.subscribe("bp.w", "lazy")
        busy = await bus.pubsub.subscribe("bp.w", "busy")
        await asyncio.gather(*[bus.pubsub.publish("bp.w", b"m") for _ in range(500)])
        for _ in range(500):
            msg = await busy.next(timeout=10)
            assert msg is not None
            await msg.ack()
        assert await lazy.next(timeout=10) is not None
        await bus.close()


async def test_publishes_beyond_the_tx_arena_wait_for_room_and_all_arrive(sock: str) -> None:
    options = {"max_payload": 64 * KIB, "arena_size": 256 * KIB, "store_size": 16 << 20}
    async with running_broker(sock, **options):
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("arena.x", "d")
        payloads = [bytes([i]) * (60 * KIB) for i in range(100)]  # 6 MB through 256 KiB
        await asyncio.gather(*[bus.pubsub.publish("arena.x", p) for p in payloads])
        for expected in payloads:
            msg = await stream.next(timeout=10)
            assert msg is not None
            assert msg.payload == expected
            await msg.ack()
        await bus.close()


async def test_a_member_holds_at_most_its_window_of_bytes_unacked(sock: str) -> None:
    """With large messages the byte window binds before the count window: a
    member gets deliveries until they add up to member_window_bytes (one
    always goes, however big), and more as it acks."""
    async with running_broker(sock, member_window_bytes=100 * KIB) as server:
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("bp.big", "reader")
        await bus.pubsub.publish("bp.big", bytes(150 * KIB))  # over the window alone
        await asyncio.gather(*[bus.pubsub.publish("bp.big", bytes(30 * KIB)) for _ in range(9)])
        state = server.broker.pubsub.consumers["reader"]
        first = await stream.next(timeout=10)
        assert len(first.payload) == 150 * KIB
        assert state.outstanding == 1  # the big one fills the window by itself
        await first.ack()
        got = [await stream.next(timeout=10) for _ in range(4)]
        assert state.outstanding == 4  # 4 x 30 KiB reach 100 KiB
        await bus.pubsub.ack_many(got)
        more = [await stream.next(timeout=10) for _ in range(4)]
        assert state.outstanding == 4
        await bus.pubsub.ack_many(more)
        last = await stream.next(timeout=10)
        assert all(len(m.payload) == 30 * KIB for m in [*got, *more, last])
        await last.ack()
        await bus.close()
