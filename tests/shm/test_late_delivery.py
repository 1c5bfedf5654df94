"""A delivery frame a client reads late (after its ack_wait passed and
another member acked the message) still carries the message's own bytes:
the broker does not reuse a block for new payloads while a client that was
sent it has not read that far."""

from __future__ import annotations

from typing import Any

from shm_helpers import RawClient

from klieo_shm import sync
from klieo_shm.layout import HEADER_SIZE, mark_read
from klieo_shm.protocol import Call, DeliverBatch, Result
from klieo_shm.protocol._frames import MSG_DESC
from klieo_shm.shm._maps import Mapping

SIZE = 4096


def test_a_delivery_read_after_its_ack_wait_keeps_its_payload(daemon: str) -> None:
    with RawClient(daemon) as slow, sync.connect(f"shm://{daemon}") as bus:
        slow.hello()
        args = {"sub_id": 1, "subject": "late.x", "durable": "d", "ack_wait": 0.2}
        slow.send(Call(1, "subscribe", args))
        [res] = slow.read(1)
        assert isinstance(res, Result)
        assert not res.error_type
        bus.pubsub.publish("late.x", b"a" * SIZE)  # sent to `slow`, which does not read
        # its ack_wait passes: the durable's other member gets it and acks it
        with bus.pubsub.subscribe("late.x", "d") as stream:
            msg = stream.next(timeout=30)
            assert msg is not None
            assert msg.payload == b"a" * SIZE
            assert msg.delivery_count == 2
            msg.ack()
            # new payloads of the same size: a freed block would take one
            for _ in range(4):
                bus.pubsub.publish("late.x", b"b" * SIZE)
            for _ in range(4):
                other = stream.next(timeout=30)
                assert other is not None
                other.ack()
        # now `slow` reads the frame it was sent first
        [ev] = slow.read(1)
        assert isinstance(ev, DeliverBatch)
        assert ev.count == 1
        _, off, hl, pl, _ = MSG_DESC.unpack(ev.descs)
        welcome = slow.welcome
        assert welcome is not None
        store = Mapping(welcome.store_name, welcome.store_size, writable=False)
        try:
            start = HEADER_SIZE + off + hl
            assert bytes(store.view[start : start + pl]) == b"a" * SIZE
        finally:
            store.close()
        assert _stats(slow, 2)["unread_expired"] == 1  # its block is still held
        # until it has read that far, `slow` is sent nothing more; once its
        # read mark says so (as a client writes it), deliveries resume
        arena = Mapping(welcome.arena_name, welcome.arena_size, writable=True)
        try:
            mark_read(arena.view, ev.first_id)
        finally:
            arena.close()
        bus.pubsub.publish("late.x", b"c" * SIZE)
        [ev] = slow.read(1)
        assert isinstance(ev, DeliverBatch)
        assert ev.count == 1
        assert _stats(slow, 3)["unread_expired"] == 0


def _stats(client: RawClient, call_id: int) -> dict[str, Any]:
    client.send(Call(call_id, "stats", {}))
    [res] = client.read(1)
    assert isinstance(res, Result)
    assert isinstance(res.value, dict)
    return res.value
