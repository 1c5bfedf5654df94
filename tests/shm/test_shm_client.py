"""The shm client: fork safety, stream ends, redelivery details of the broker."""

from __future__ import annotations

import asyncio
import os

import pytest
from shm_helpers import running_broker

import klieo_shm
from klieo_shm.protocol import KV_OP_CAS, KvWrite
from klieo_shm.shm import ShmKvStore, ShmPubsub
from klieo_shm.shm._client import _EAGER_ACKS, _EAGER_MSGS


async def test_forked_child_reconnects_and_leaves_the_parent_connection_alone(sock: str) -> None:
    async with running_broker(sock):
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("fork.x", "d")
        await bus.pubsub.publish("fork.x", b"from-parent")
        pid = os.fork()
        if pid == 0:  # the child: same bus object, must open its own connection
            code = 1
            try:
                asyncio.events._set_running_loop(None)
                asyncio.run(bus.pubsub.publish("fork.x", b"from-child"))
                code = 0
            finally:
                os._exit(code)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        got = set()
        for _ in range(2):
            msg = await stream.next(timeout=10)
            assert msg is not None
            await msg.ack()
            got.add(msg.payload)
        assert got == {b"from-parent", b"from-child"}
        await bus.pubsub.publish("fork.x", b"parent-still-works")
        msg = await stream.next(timeout=10)
        assert msg is not None
        assert msg.payload == b"parent-still-works"
        await bus.close()


async def test_an_operation_that_cannot_be_encoded_leaves_nothing_awaited(sock: str) -> None:
    async with running_broker(sock), await klieo_shm.connect(f"shm://{sock}") as bus:
        kv = bus.kv
        assert isinstance(kv, ShmKvStore)
        client = kv._client
        assert await kv.put("enc", "k", b"v") == 1

        with pytest.raises(klieo_shm.ProtocolError, match="cannot encode KvWrite"):
            client.start(lambda call_id: KvWrite(call_id, KV_OP_CAS, "enc", "k", b"w", 2**64))

        assert not client._awaiting()  # a spinning loop would spin for it for ever
        assert await kv.put("enc", "k", b"w") == 2


async def test_closing_a_bus_cancels_its_handlers_still_running(sock: str) -> None:
    async with running_broker(sock), await klieo_shm.connect(f"shm://{sock}") as asker:
        server = await klieo_shm.connect(f"shm://{sock}")
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def handler(data: bytes) -> bytes:
            started.set()
            try:
                await asyncio.Event().wait()  # never answers
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return data

        await server.requests.serve("slow.x", handler)
        request = asyncio.ensure_future(asker.requests.request("slow.x", b"x", 30.0))
        await asyncio.wait_for(started.wait(), 10)

        await server.close()

        await asyncio.wait_for(cancelled.wait(), 10)
        with pytest.raises(klieo_shm.BusError):  # the server went away mid-request
            await asyncio.wait_for(request, 10)


async def test_deleting_a_durable_ends_its_members_streams(sock: str) -> None:
    async with running_broker(sock):
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("del.x", "gone")
        await bus.pubsub.publish("del.x", b"x")
        await bus.pubsub.delete_durable("gone")
        # a delivery made before the delete may still come; then the end
        for _ in range(2):
            if await stream.next(timeout=10) is None:
                break
        else:
            raise AssertionError("stream did not end")
        await bus.close()


async def test_headers_and_large_payload_round_trip(sock: str) -> None:
    async with running_broker(sock):
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("big.>", "d")
        big = os.urandom(8 << 20)
        await bus.pubsub.publish("big.one", big, {"k": "v", "ü": "ß"})
        msg = await stream.next(timeout=30)
        assert msg is not None
        assert msg.payload == big
        assert msg.headers == {"k": "v", "ü": "ß"}
        assert msg.subject == "big.one"
        await msg.ack()
        await bus.close()


async def test_concurrent_publishes_share_batches_and_keep_order(sock: str) -> None:
    async with running_broker(sock):
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("ord.x", "d")
        await asyncio.gather(*[bus.pubsub.publish("ord.x", b"%d" % i) for i in range(2000)])
        seqs, payloads = [], []
        for _ in range(2000):
            msg = await stream.next(timeout=10)
            assert msg is not None
            seqs.append(msg.seq)
            payloads.append(msg.payload)
            await msg.ack()
        assert seqs == sorted(seqs)
        assert payloads == [b"%d" % i for i in range(2000)]
        await bus.close()


async def test_publish_async_pipelines_without_a_task_per_message(sock: str) -> None:
    async with running_broker(sock):
        bus = await klieo_shm.connect(f"shm://{sock}")
        pubsub = bus.pubsub
        assert isinstance(pubsub, ShmPubsub)
        stream = await pubsub.subscribe("pa.x", "d")
        futures = [pubsub.publish_async("pa.x", b"%d" % i) for i in range(5000)]
        await asyncio.gather(*futures)
        for i in range(5000):
            msg = await stream.next(timeout=10)
            assert msg is not None
            assert msg.payload == b"%d" % i
            await msg.ack()
        with pytest.raises(klieo_shm.InvalidArgument):
            pubsub.publish_async("bad subject", b"")
        await bus.close()


async def test_many_long_subjects_are_split_into_frames_under_the_limit(sock: str) -> None:
    async with running_broker(sock, max_payload=64 * 1024, arena_size=1 << 20):
        bus = await klieo_shm.connect(f"shm://{sock}")
        pubsub = bus.pubsub
        assert isinstance(pubsub, ShmPubsub)
        subject = "long." + ".".join(["t" * 60] * 16)  # ~1 KB
        stream = await pubsub.subscribe("long.>", "d")
        n = 3000  # ~3 MB of subjects: over the 1 MiB + 64 KiB frame limit
        await asyncio.gather(*[pubsub.publish_async(subject, b"") for _ in range(n)])
        for _ in range(n):
            msg = await stream.next(timeout=10)
            assert msg is not None
            assert msg.subject == subject
            await msg.ack()
        await bus.close()


async def test_deleting_a_durable_frees_its_storage_once_its_members_let_go(sock: str) -> None:
    async with running_broker(sock) as server:
        store = server.broker.pubsub.alloc
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("free.x", "gone")
        for i in range(20):
            await bus.pubsub.publish("free.x", b"%d" % i)
        first = await stream.next(timeout=10)  # delivered, not acked
        assert first is not None
        assert store.used > 0
        await bus.pubsub.delete_durable("gone")
        await bus.close()  # the member's session ends: nothing may stay pinned
        other = await klieo_shm.connect(f"shm://{sock}")
        await other.pubsub.publish("free.y", b"sync")  # a round trip after the close
        assert store.used == 0
        await other.close()


async def test_ack_many_queues_one_range_and_acks_deliveries_of_another_bus_too(
    sock: str,
) -> None:
    async with running_broker(sock):
        one = await klieo_shm.connect(f"shm://{sock}")
        two = await klieo_shm.connect(f"shm://{sock}")
        mine = await one.pubsub.subscribe("many.a", "da", ack_wait=1.0)
        theirs = await two.pubsub.subscribe("many.b", "db", ack_wait=1.0)
        await asyncio.gather(*[one.pubsub.publish("many.a", b"%d" % i) for i in range(50)])
        await one.pubsub.publish("many.b", b"b")
        got: list[klieo_shm.Msg] = []
        while len(got) < 50:
            got += await mine.next_many(100, timeout=10)
        other = await theirs.next_many(100, timeout=10)
        assert len(other) == 1
        client = one.pubsub._client  # type: ignore[attr-defined]

        await one.pubsub.ack_many(got + other)

        # nothing awaited inside ack_many: its acks are still queued here
        assert len(client._acks) == 1
        assert client._acks[0][1] == 50  # one range of 50
        for stream in (mine, theirs):  # past ack_wait, nothing comes back
            with pytest.raises(klieo_shm.Timeout):
                await stream.next_many(100, timeout=1.5)
        await one.close()
        await two.close()


async def test_long_bursts_of_publishes_and_acks_are_written_while_they_are_queued(
    sock: str,
) -> None:
    """A caller that queues many publishes (or acks) in one loop turn does
    not wait for the turn's end to have the first ones written: the broker
    works on them meanwhile. Every message still arrives once, in order."""
    async with running_broker(sock):
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("burst.x", "d")
        client = bus.pubsub._client  # type: ignore[attr-defined]
        count = _EAGER_MSGS + 10
        futs = [bus.pubsub.publish_async("burst.x", b"%d" % i) for i in range(count)]

        # nothing awaited yet: the first _EAGER_MSGS went out as one batch
        assert len(client._inflight) == 1
        assert len(client._batch) == 10
        await asyncio.gather(*futs)
        got: list[klieo_shm.Msg] = []
        while len(got) < 2 * _EAGER_ACKS:  # within the broker's member window
            got += await stream.next_many(2 * _EAGER_ACKS - len(got), timeout=10)

        await bus.pubsub.ack_many(got[: _EAGER_ACKS - 1])
        assert len(client._acks) == 1  # under the mark: queued for the turn's end
        await bus.pubsub.ack_many(got[_EAGER_ACKS - 1 :])
        assert client._acks == []  # written at once
        while len(got) < count:
            more = await stream.next_many(count, timeout=10)
            await bus.pubsub.ack_many(more)
            got += more
        assert [m.payload for m in got] == [b"%d" % i for i in range(count)]
        await stream.close()  # hands what is unacked to the next member at once
        again = await bus.pubsub.subscribe("burst.x", "d")
        with pytest.raises(klieo_shm.Timeout):  # all were acked: nothing comes back
            await again.next_many(count, timeout=1.0)
        await bus.close()


@pytest.mark.parametrize(
    "subjects",
    [
        ["sub.a", "sub.b"],  # equal lengths, different subjects
        ["sub.ab", "sub.a", "sub.bab"],  # different lengths
        ["sub.same"],  # one subject (decoded once per batch)
    ],
)
async def test_each_delivery_of_a_batch_keeps_its_own_subject(
    sock: str, subjects: list[str]
) -> None:
    async with running_broker(sock):
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("sub.>", "d")
        sent = [subjects[i % len(subjects)] for i in range(60)]
        await asyncio.gather(*[bus.pubsub.publish_async(s, b"%d" % i) for i, s in enumerate(sent)])
        got: list[klieo_shm.Msg] = []
        while len(got) < len(sent):
            got += await stream.next_many(100, timeout=10)
        assert [(m.subject, m.payload) for m in got] == [(s, b"%d" % i) for i, s in enumerate(sent)]
        await bus.close()


@pytest.mark.parametrize("size", [0, 1, 100, 5000, 60_000])
async def test_one_batch_of_mixed_headers_keeps_each_message_intact(sock: str, size: int) -> None:
    """Messages queued in one loop turn share a batch (joined into the arena
    when small, copied one by one when large): each keeps its own payload,
    headers and subject."""
    async with running_broker(sock):
        bus = await klieo_shm.connect(f"shm://{sock}")
        stream = await bus.pubsub.subscribe("mix.>", "d")
        sent = [
            (f"mix.{i % 3}", os.urandom(size + i), {"i": str(i)} if i % 2 else None)
            for i in range(20)
        ]
        await asyncio.gather(*[bus.pubsub.publish_async(s, p, h) for s, p, h in sent])
        got: list[klieo_shm.Msg] = []
        while len(got) < len(sent):
            got += await stream.next_many(100, timeout=10)
        assert [(m.subject, m.payload, m.headers) for m in got] == [
            (s, p, h or {}) for s, p, h in sent
        ]
        await bus.pubsub.ack_many(got)
        await bus.close()


async def test_a_segment_of_another_format_version_gives_closed_naming_it(
    daemon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that reads another arena format than its broker writes (an
    older or newer klieo_shm) fails to connect with ``Closed`` naming the
    versions, and the broker goes on serving others."""
    import klieo_shm.layout._arena as arena_layout

    with monkeypatch.context() as patched:
        patched.setattr(arena_layout, "ARENA_VERSION", arena_layout.ARENA_VERSION + 1)
        with pytest.raises(klieo_shm.Closed, match="segment format version"):
            await klieo_shm.connect(f"shm://{daemon}")
    bus = await klieo_shm.connect(f"shm://{daemon}")
    try:
        await bus.kv.put("after", "k", b"v")
        got = await bus.kv.get("after", "k")
        assert got is not None
        assert got.value == b"v"
    finally:
        await bus.close()
