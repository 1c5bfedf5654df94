"""Kept batches: large payloads delivered from the publisher's arena (two
copies end to end, not three), held there until every durable acked them,
and never lost when the publisher goes away, when the broker is killed, or
when it stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from shm_helpers import bus_on, restartable_daemon, running_broker

import klieo_shm
from klieo_shm.daemon import DaemonProcess, leftover_segments, spawn_daemon
from klieo_shm.shm._client import ShmClient

WAIT = 30.0
BIG = 200 * 1024  # over --keep-min below, under --max-payload
ARGS = ("--arena-size=2M", "--max-payload=256K", "--keep-min=64K", "--store-size=16M")
"""A keep zone of 1 MiB: five kept messages of BIG fill it."""


@pytest.fixture
def daemon(sock: str) -> Iterator[str]:
    with spawn_daemon(sock, *ARGS):
        yield sock


def client(bus: klieo_shm.Bus) -> ShmClient:
    c: Any = bus.pubsub
    assert isinstance(c._client, ShmClient)
    return c._client


async def round_trip(*buses: klieo_shm.Bus) -> None:
    """Every event the broker sent each bus before now has been handled (a
    call is answered after what the broker queued for that client earlier)."""
    for bus in buses:
        await client(bus).call("ping", {})


def arenas(sock: str) -> list[str]:
    return [name for name in leftover_segments(sock) if name.rsplit("-", 1)[-1].startswith("a")]


async def stats(bus: klieo_shm.Bus) -> dict[str, Any]:
    got: dict[str, Any] = await client(bus).call("stats", {})
    return got


async def until_gone(bus: klieo_shm.Bus, client_id: int) -> None:
    """Wait until the broker has handled the end of client ``client_id``."""
    async with asyncio.timeout(WAIT):
        while any(c["client_id"] == client_id for c in (await stats(bus))["clients"]):
            await round_trip(bus)


async def test_a_big_batch_is_kept_in_the_arena_until_acked(daemon: str) -> None:
    payload = os.urandom(BIG)
    async with bus_on(daemon) as pub, bus_on(daemon) as sub:
        stream = await sub.pubsub.subscribe("big.>", "reader")
        await pub.pubsub.publish("big.x", payload, {"k": "v"})
        assert client(pub).zones.kept == 1  # answered PUBACK_KEPT: not copied
        msg = await stream.next(timeout=WAIT)
        assert (msg.payload, msg.headers) == (payload, {"k": "v"})
        assert len(client(sub).peers or ()) == 1  # read from the publisher's arena
        await pub.pubsub.publish("big.x", b"small")  # under --keep-min: copied
        small = await stream.next(timeout=WAIT)
        assert small.payload == b"small"
        assert client(pub).zones.kept == 1
        await msg.ack()
        await small.ack()
        await round_trip(sub, pub)
        assert client(pub).zones.kept == 0  # released once acked
        await stream.close()


async def test_with_keep_min_zero_every_batch_is_copied(sock: str) -> None:
    payload = os.urandom(BIG)
    with spawn_daemon(sock, *ARGS, "--keep-min=0"):
        async with bus_on(sock) as pub, bus_on(sock) as sub:
            stream = await sub.pubsub.subscribe("big.>", "reader")
            await pub.pubsub.publish("big.x", payload)
            assert client(pub).zones.kept == 0
            msg = await stream.next(timeout=WAIT)
            assert msg.payload == payload
            assert len(client(sub).peers or ()) == 0
            await msg.ack()
            await stream.close()


async def test_a_kept_message_outlives_its_publisher(daemon: str) -> None:
    payload = os.urandom(BIG)
    async with bus_on(daemon) as sub:
        stream = await sub.pubsub.subscribe("big.>", "reader")
        await stream.close()  # the durable owes what comes, nobody reads it yet
        async with bus_on(daemon) as pub:
            await pub.pubsub.publish("big.x", payload)
            assert client(pub).zones.kept == 1
            peers = client(pub).peers
            assert peers is not None
            pub_id = peers.own_id
        await until_gone(sub, pub_id)
        st = await stats(sub)
        assert (st["kept_batches"], st["orphan_arenas"]) == (1, 1)
        assert len(arenas(daemon)) == 2  # the gone publisher's and the reader's
        stream = await sub.pubsub.subscribe("big.>", "reader")
        msg = await stream.next(timeout=WAIT)
        assert msg.payload == payload
        assert len(client(sub).peers or ()) == 1
        await msg.ack()
        await round_trip(sub)
        st = await stats(sub)
        assert (st["kept_batches"], st["orphan_arenas"]) == (0, 0)
        assert len(arenas(daemon)) == 1  # released: the orphan arena is gone
        assert len(client(sub).peers or ()) == 0  # and unmapped (ArenaGone)
        await stream.close()


async def test_a_durable_that_never_acks_does_not_stall_big_publishes(daemon: str) -> None:
    """Kept messages a durable never acks fill the publisher's keep zone; the
    publisher waits briefly, then has the broker copy (spill), so the other
    durable gets everything."""
    payloads = [os.urandom(BIG) for _ in range(20)]
    async with bus_on(daemon) as pub, bus_on(daemon) as sub:
        lazy = await sub.pubsub.subscribe("big.>", "lazy")
        busy = await sub.pubsub.subscribe("big.>", "busy")
        for p in payloads:
            await asyncio.wait_for(pub.pubsub.publish("big.x", p), WAIT)
        assert client(pub).zones.kept < len(payloads)
        for p in payloads:
            msg = await busy.next(timeout=WAIT)
            assert msg.payload == p
            await msg.ack()
        held = await lazy.next(timeout=WAIT)  # delivered, never acked
        assert held.payload == payloads[0]
        await lazy.close()
        await busy.close()


@pytest.fixture
def restartable(sock: str) -> Iterator[DaemonProcess]:
    with restartable_daemon(sock, *ARGS) as d:
        yield d


async def test_kept_messages_survive_a_kill_and_a_clean_stop(
    restartable: DaemonProcess, sock: str
) -> None:
    payloads = [os.urandom(BIG) for _ in range(3)]
    async with bus_on(sock) as pub:
        stream = await pub.pubsub.subscribe("big.>", "reader")
        await stream.close()
        for p in payloads:
            await pub.pubsub.publish("big.x", p, {"n": str(len(p))})
        assert client(pub).zones.kept == 3
        old = arenas(sock)
        restartable.kill()  # the new broker copies them out of the old arena
        restartable.start()
        assert not set(arenas(sock)) & set(old), "the dead broker's arenas were not removed"
        # the publisher reconnected with new zones, and keeps big batches again
        with contextlib.suppress(klieo_shm.Closed):
            await asyncio.wait_for(pub.kv.keys("probe"), WAIT)
        other = await pub.pubsub.subscribe("other.>", "o")
        await pub.pubsub.publish("other.x", payloads[0])
        assert client(pub).zones.kept == 1
        assert (await other.next(timeout=WAIT)).payload == payloads[0]
        await other.close()
    async with bus_on(sock) as bus:
        stream = await bus.pubsub.subscribe("big.>", "reader")
        got = [await stream.next(timeout=WAIT) for _ in payloads]
        assert [m.payload for m in got] == payloads
        assert all(m.headers == {"n": str(BIG)} for m in got)
        await got[0].ack()
        await stream.close()
        await round_trip(bus)
        for p in payloads[1:]:  # kept again, in this broker
            await bus.pubsub.publish("big.y", p)
        assert client(bus).zones.kept == 2
        # a clean stop with the publisher still connected: the kept batches
        # move to the store, and no segment stays behind
        restartable.stop(allow_killed=False)
    restartable.start()
    async with bus_on(sock) as bus:
        stream = await bus.pubsub.subscribe("big.>", "reader")
        got = [await stream.next(timeout=WAIT) for _ in range(4)]
        assert [m.payload for m in got] == payloads[1:] + payloads[1:]
        await bus.pubsub.ack_many(got)
        await stream.close()


def spares(sock: str) -> list[str]:
    return [name for name in leftover_segments(sock) if "-spare" in name]


_THREE_CLIENTS = """
import asyncio, sys, klieo_shm
async def main():
    for bus in [await klieo_shm.connect(sys.argv[1]) for _ in range(3)]:
        await bus.close()
asyncio.run(main())
"""


async def test_a_gone_clients_arena_is_handed_to_the_next_client(daemon: str) -> None:
    """Its pages are already in memory: the next client's first large
    publishes fault nothing in. At most two wait, renamed (no client finds
    them under an old client's name), and one is handed out only once the
    process that had it is gone (until then it may still write to it)."""
    async with bus_on(daemon) as sub:
        mine = await klieo_shm.connect(f"shm://{daemon}")
        await mine.close()  # this process lives on: its arena is not handed out
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _THREE_CLIENTS, f"shm://{daemon}"
        )
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        async with asyncio.timeout(WAIT):
            while len((await stats(sub))["clients"]) > 1:
                await round_trip(sub)
        assert len(spares(daemon)) == 2  # the others were destroyed
        assert len(arenas(daemon)) == 1  # sub's
        async with bus_on(daemon) as pub:  # takes the spare of the gone process
            assert len(spares(daemon)) == 1
            stream = await sub.pubsub.subscribe("big.>", "reader")
            payload = os.urandom(BIG)
            await pub.pubsub.publish("big.x", payload)
            assert client(pub).zones.kept == 1
            msg = await stream.next(timeout=WAIT)
            assert msg.payload == payload
            await msg.ack()
            await stream.close()
            async with bus_on(daemon) as other:  # the spare left is this process's
                assert len(spares(daemon)) == 1
                await round_trip(other)


async def test_kept_bytes_count_against_the_store(sock: str) -> None:
    """A store of 512 KiB of data takes two 256 KiB blocks: two batches of
    BIG are kept, the third is copied (it still fits the store)."""
    with spawn_daemon(sock, *ARGS[:-1], "--store-size=600K"):
        async with bus_on(sock) as pub:
            stream = await pub.pubsub.subscribe("big.>", "reader")
            payloads = [os.urandom(BIG) for _ in range(3)]
            for p in payloads:
                await pub.pubsub.publish("big.x", p)
            assert client(pub).zones.kept == 2
            got = [await stream.next(timeout=WAIT) for _ in payloads]
            assert [m.payload for m in got] == payloads
            await pub.pubsub.ack_many(got)
            await stream.close()


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-state"])
async def test_the_store_budget_of_kept_bytes_comes_back_once_acked(
    sock: str, journal: bool
) -> None:
    options: dict[str, Any] = {"arena_size": 2 << 20, "max_payload": 256 << 10}
    if not journal:
        options["state_dir"] = None
    async with running_broker(sock, keep_min=64 << 10, **options) as server:
        ps = server.broker.pubsub
        async with bus_on(sock) as bus:
            stream = await bus.pubsub.subscribe("big.>", "reader")
            for _ in range(3):
                await bus.pubsub.publish("big.x", os.urandom(BIG))
            assert client(bus).zones.kept == 3
            assert ps.kept_bytes == 3 * ps.alloc.block_size(BIG)
            got = [await stream.next(timeout=WAIT) for _ in range(3)]
            await bus.pubsub.ack_many(got)
            await round_trip(bus)
            assert ps.kept_bytes == 0
            assert client(bus).zones.kept == 0
            await stream.close()
