"""A broker restart loses nothing acknowledged: kill -9 of klieo-shmd, then a
new one on the same state directory, and every durable, message, job, dead
letter, KV value, revision and live holder's lease is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from shm_helpers import SMALL, SMALL_ARGS, bus_on

import klieo_shm
from klieo_shm import Job
from klieo_shm.daemon import DaemonError, DaemonProcess
from klieo_shm.daemon._config import default_state_dir
from klieo_shm.layout.journal import JOURNAL_HEADER, JOURNAL_MAGIC, JOURNAL_VERSION

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(klieo_shm.__file__)))
WAIT = 30.0


async def settle(bus: klieo_shm.Bus) -> None:
    """After a broker restart the test did synchronously: a call made before
    ``bus`` read the old connection's EOF fails as in flight; after this one,
    calls wait for the reconnection."""
    with contextlib.suppress(klieo_shm.Closed):
        await asyncio.wait_for(bus.kv.keys("probe"), WAIT)


def restart(d: DaemonProcess) -> None:
    d.kill()
    d.start()


class Child:
    """A helper process (jobs_worker.py / kv_worker.py) speaking in lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def expect(self, word: str) -> list[str]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WAIT)
        parts = raw.decode().split()
        assert parts, f"process {self.proc.pid} exited ({await self.proc.wait()})"
        assert parts[0] == word, parts
        return parts[1:]

    def tell(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def kill(self) -> None:
        self.proc.kill()
        await self.proc.wait()


@contextlib.asynccontextmanager
async def child(script: str, *args: str) -> AsyncIterator[Child]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        os.path.join(HERE, script),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        yield Child(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def append(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def flip_last_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))


def overwrite(path: str, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def exists(path: str) -> bool:
    return os.path.exists(path)


async def test_pending_and_unacked_messages_survive_and_are_redelivered(
    broker: DaemonProcess, sock: str
) -> None:
    async with bus_on(sock) as bus:
        stream = await bus.pubsub.subscribe("orders.>", "shipper")
        for i in range(100):
            await bus.pubsub.publish(f"orders.{i}", b"order-%d" % i, {"n": str(i)})
        acked = set()
        for _ in range(30):
            msg = await asyncio.wait_for(stream.next(), WAIT)
            if msg.seq % 3 == 0:
                await msg.ack()
                acked.add(msg.seq)
        await stream.close()
        await bus.pubsub.subscribe("audit.>", "auditor")  # a durable with nothing yet
        restart(broker)
    async with bus_on(sock) as bus:
        stream = await bus.pubsub.subscribe("orders.>", "shipper")
        got = []
        for _ in range(100 - len(acked)):
            msg = await asyncio.wait_for(stream.next(), WAIT)
            got.append(msg)
            await msg.ack()
        seqs = [m.seq for m in got]
        assert seqs == sorted(set(range(1, 101)) - acked)  # in order, nothing lost, no ack undone
        assert all(m.payload == b"order-%d" % (m.seq - 1) for m in got)
        assert all(m.headers == {"n": str(m.seq - 1)} for m in got)
        assert all(m.delivery_count >= 2 for m in got if m.seq <= 30)  # delivered before
        await bus.pubsub.publish("orders.new", b"after")
        after = await asyncio.wait_for(stream.next(), WAIT)
        assert after.seq > 100  # sequences continue, never reused
        await after.ack()
        audit = await bus.pubsub.subscribe("audit.>", "auditor")
        await bus.pubsub.publish("audit.x", b"kept")
        assert (await asyncio.wait_for(audit.next(), WAIT)).payload == b"kept"
        await bus.pubsub.delete_durable("auditor")
        await stream.close()
        await audit.close()
    restart(broker)
    async with bus_on(sock) as bus:  # acked before the kill: not redelivered
        stream = await bus.pubsub.subscribe("orders.>", "shipper")
        await bus.pubsub.publish("orders.last", b"last")
        msg = await asyncio.wait_for(stream.next(), WAIT)
        assert msg.payload == b"last"
        await msg.ack()
        await stream.close()


async def _take(
    ps: klieo_shm.Pubsub, stream: klieo_shm.MsgStream, count: int, *, ack: bool
) -> list[klieo_shm.Msg]:
    """``count`` deliveries in batches, acked batch by batch if ``ack``."""
    got: list[klieo_shm.Msg] = []
    while len(got) < count:
        batch = await stream.next_many(count - len(got), timeout=WAIT)
        if ack:
            await ps.ack_many(batch)
        got += batch
    return got


async def test_fan_out_state_survives_two_restarts_through_the_snapshot(
    broker: DaemonProcess, sock: str
) -> None:
    """Three durables owe different parts of the same stored batches: one
    acked a prefix, one holds delivered messages, one read nothing. The
    first restart replays the journal and writes a snapshot; the second
    restores from that snapshot alone."""
    async with bus_on(sock) as bus:
        ps = bus.pubsub
        streams = {name: await ps.subscribe("fan.>", name) for name in "abc"}
        await asyncio.gather(*[ps.publish(f"fan.{i % 3}", b"%d" % i) for i in range(300)])
        await _take(ps, streams["a"], 100, ack=True)  # a: the first 100 acked
        first = await _take(ps, streams["b"], 150, ack=False)  # b: 100 acked, 50 given back
        await ps.ack_many(first[::3] + first[1::3])
        # a second stored batch that every durable owes whole
        await asyncio.gather(*[ps.publish(f"fan.{i % 3}", b"%d" % i) for i in range(300, 400)])
        for stream in streams.values():
            await stream.close()
        restart(broker)
    restart(broker)  # the first one's snapshot is all the second one reads
    owed = {}
    async with bus_on(sock) as bus:
        ps = bus.pubsub
        for name, count in {"a": 300, "b": 300, "c": 400}.items():
            stream = await ps.subscribe("fan.>", name)
            got = await _take(ps, stream, count, ack=True)
            owed[name] = {m.seq: (m.payload, m.subject, m.delivery_count) for m in got}
            with pytest.raises(klieo_shm.Timeout):
                await stream.next(timeout=0.5)  # nothing owed beyond
            await stream.close()
    assert sorted(owed["c"]) == list(range(1, 401))
    assert sorted(owed["a"]) == list(range(101, 401))
    held = {m.seq for m in first[2::3]}
    assert sorted(owed["b"]) == sorted(held | set(range(151, 401)))
    for name, got in owed.items():
        for seq, (payload, subject, dcount) in got.items():
            assert (payload, subject) == (b"%d" % (seq - 1), f"fan.{(seq - 1) % 3}")
            # delivered (or prefetched) once before the restarts at most
            assert dcount in ((2,) if name == "b" and seq in held else (1, 2)), (name, seq)


async def test_jobs_in_every_state_survive(broker: DaemonProcess, sock: str) -> None:
    async with bus_on(sock) as bus:
        jobs = bus.jobs
        ready_id = await jobs.enqueue("work", Job(b"ready", dedup_key="k-ready"))
        delayed_id = await jobs.enqueue("work", Job(b"delayed"))
        dead_id = await jobs.enqueue("work", Job(b"dead", max_attempts=1))
        mine_id = await jobs.enqueue("work", Job(b"mine"))
        orphan_id = await jobs.enqueue("work", Job(b"orphan"))
        claimed = {}
        while len(claimed) < 4:
            job = await jobs.claim("work", "w", 60.0)
            assert job is not None
            claimed[job.id] = job
        # the fifth (orphan) goes to a process that dies while the broker is down
        assert set(claimed) == {ready_id, delayed_id, dead_id, mine_id}
        async with child("jobs_worker.py", sock, "claim", "work", "60") as other:
            got = await other.expect("claimed")
            assert got[0] == orphan_id
            await claimed[ready_id].nak(0.0)
            await claimed[delayed_id].nak(3600.0)
            await claimed[dead_id].dead_letter("poison")
            before = await jobs.stats("work")
            assert (before.ready, before.delayed, before.claimed, before.dead) == (1, 1, 2, 1)
            broker.kill()
            await other.kill()
        broker.start()
        # the same bus carries on: it reconnects by itself
        stats = await jobs.stats("work")
        # the dead holder's claim ended (an attempt); this process's claim is kept
        assert (stats.ready, stats.delayed, stats.claimed, stats.dead) == (2, 1, 1, 1)
        letters = await jobs.dead_letters("work")
        assert [(d.id, d.payload, d.attempts, d.reason) for d in letters] == [
            (dead_id, b"dead", 1, "poison")
        ]
        again = await jobs.enqueue("work", Job(b"dup", dedup_key="k-ready"))
        assert again == ready_id  # the dedup record survived
        seen = {}
        for _ in range(2):
            job = await jobs.claim("work", "w2", 60.0)
            assert job is not None
            seen[job.id] = job
        assert set(seen) == {ready_id, orphan_id}
        assert seen[ready_id].attempt == 2
        assert seen[orphan_id].attempt == 2
        first_token = claimed[mine_id].token
        assert all(j.token > first_token for j in seen.values())  # tokens never go back
        for j in seen.values():
            await j.ack()
        # the claim kept for this process: its old handle acks it on the new broker
        await claimed[mine_id].ack()
        stats = await jobs.stats("work")
        assert (stats.ready, stats.claimed) == (0, 0)


async def test_kv_values_revisions_and_leases_survive(broker: DaemonProcess, sock: str) -> None:
    async with bus_on(sock) as bus:
        kv = bus.kv
        assert await kv.put("cfg", "a", b"1") == 1
        assert await kv.put("cfg", "b", b"2") == 2
        assert await kv.cas("cfg", "a", b"3", 1) == 3
        await kv.delete("cfg", "b")  # revision 4
        mine = await kv.lease("locks", "mine", 60.0)
        async with child("kv_worker.py", sock, "lease", "locks", "theirs", "60") as other:
            await other.expect("held")
            broker.kill()
            await other.kill()  # dies while no broker watches it
        broker.start()
        entry = await kv.get("cfg", "a")
        assert entry is not None
        assert (entry.value, entry.revision) == (b"3", 3)
        assert await kv.get("cfg", "b") is None
        assert sorted(await kv.keys("cfg")) == ["a"]
        assert await kv.cas("cfg", "b", b"new", None) == 5  # revisions keep increasing
        with pytest.raises(klieo_shm.Conflict):
            await kv.lease("locks", "mine", 5.0)  # its holder (this process) still runs
        theirs = await kv.lease("locks", "theirs", 5.0)  # its holder died: ended
        assert theirs.token == 2  # fencing tokens never go back
        await theirs.release()
        await mine.heartbeat()  # the live holder carries on with its token
        await mine.release()


async def test_a_write_the_full_table_refused_leaves_the_old_value_after_a_restart(
    sock: str,
) -> None:
    d = DaemonProcess(sock, "--kv-size", "64K", "--kv-max-size", "128K")
    d.start()
    try:
        async with bus_on(sock) as bus:
            kv = bus.kv
            rev = await kv.put("cap", "k", b"old")
            with pytest.raises(klieo_shm.Full):
                await kv.put("cap", "k", b"x" * 200_000)  # journalled, then refused
            with pytest.raises(klieo_shm.Full):
                await kv.put("cap", "gone", b"x" * 200_000)  # a new key: refused too
            restart(d)
            await settle(bus)

            assert await kv.get("cap", "k") == klieo_shm.KvEntry(b"old", rev)
            assert await kv.get("cap", "gone") is None
            assert await kv.keys("cap") == ["k"]
    finally:
        d.stop()


async def test_a_clean_restart_keeps_claims_and_a_torn_tail_is_ignored(
    broker: DaemonProcess, sock: str
) -> None:
    async with bus_on(sock) as bus:
        await bus.kv.put("b", "k", b"v")
        await bus.jobs.enqueue("q", Job(b"j"))
        broker.stop()  # SIGTERM: a clean stop keeps the state
        path = os.path.join(default_state_dir(sock), "journal")
        append(path, b"\xff\x00\x00\x00\x12\x34\x56\x78partial")  # a body never written
        broker.start()
    async with bus_on(sock) as bus:
        entry = await bus.kv.get("b", "k")
        assert entry is not None
        assert entry.revision == 1
        assert (await bus.jobs.stats("q")).ready == 1
        assert await bus.kv.put("b", "k", b"w") == 2
    broker.stop()
    flip_last_byte(path)  # inside the last record: its crc no longer matches
    broker.start()
    async with bus_on(sock) as bus:
        entry = await bus.kv.get("b", "k")
        assert entry is not None
        assert entry.value == b"v"
        assert (await bus.jobs.stats("q")).ready == 1


def test_another_format_version_is_refused_with_both_versions_named(sock: str) -> None:
    state = default_state_dir(sock)
    os.makedirs(state)
    with open(os.path.join(state, "journal"), "wb") as f:
        f.write(JOURNAL_HEADER.pack(JOURNAL_MAGIC, 99, 0))
    out = subprocess.run(
        [sys.executable, "-m", "klieo_shm.daemon", "--socket", sock, *SMALL_ARGS],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert out.returncode == 1
    assert "version 99" in out.stderr, out.stderr
    assert f", {JOURNAL_VERSION} only" in out.stderr, out.stderr
    assert state in out.stderr


def test_one_state_directory_serves_one_broker(sock: str) -> None:
    state = default_state_dir(sock)
    other = os.path.join(os.path.dirname(sock), "o.sock")
    with DaemonProcess(sock, *SMALL_ARGS):
        second = DaemonProcess(other, *SMALL_ARGS, "--state-dir", state)
        with pytest.raises(DaemonError):
            second.start()
        second.stop()


async def test_no_state_starts_empty(sock: str) -> None:
    d = DaemonProcess(sock, *SMALL_ARGS, "--no-state")
    d.start()
    try:
        async with bus_on(sock) as bus:
            await bus.kv.put("b", "k", b"v")
            restart(d)
        async with bus_on(sock) as bus:
            assert await bus.kv.get("b", "k") is None
    finally:
        d.stop()
    assert not exists(default_state_dir(sock))


async def test_the_journal_is_compacted_and_the_snapshot_restores(
    sock: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shm_helpers import running_broker

    import klieo_shm.daemon._journal as journal_module

    limit = 64 << 10
    monkeypatch.setattr(journal_module, "COMPACT_MIN", limit)
    path = os.path.join(default_state_dir(sock), "journal")
    sizes = []
    async with running_broker(sock, **SMALL) as server, bus_on(sock) as bus:
        stream = await bus.pubsub.subscribe("t.>", "d")
        for i in range(3000):
            await bus.pubsub.publish("t.x", b"%06d" % i + bytes(100))
            await bus.kv.put("b", "counter", b"%d" % i)
            msg = await asyncio.wait_for(stream.next(), WAIT)
            if i < 2990:
                await msg.ack()
            if i % 100 == 0:
                sizes.append(server.broker.journal.size if server.broker.journal else 0)
        await stream.close()
    assert max(sizes) < 8 * limit, sizes  # rewritten again and again, not grown
    assert size_of(path) < 8 * limit
    async with running_broker(sock, **SMALL), bus_on(sock) as bus:
        entry = await bus.kv.get("b", "counter")
        assert entry is not None
        assert (entry.value, entry.revision) == (b"2999", 3000)
        stream = await bus.pubsub.subscribe("t.>", "d")
        left = [await asyncio.wait_for(stream.next(), WAIT) for _ in range(10)]
        assert [m.payload[:6] for m in left] == [b"%06d" % i for i in range(2990, 3000)]
        for m in left:
            await m.ack()
        await stream.close()


def size_of(path: str) -> int:
    return os.path.getsize(path)


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
async def test_a_state_directory_of_ones_choice_with_each_fsync_policy(
    sock: str, policy: str
) -> None:
    state = os.path.join(os.path.dirname(sock), "elsewhere")
    d = DaemonProcess(sock, *SMALL_ARGS, "--state-dir", state, "--fsync", policy)
    d.start()
    try:
        async with bus_on(sock) as bus:
            assert await bus.kv.put("b", "k", policy.encode()) == 1
        restart(d)
        async with bus_on(sock) as bus:
            entry = await bus.kv.get("b", "k")
            assert entry is not None
            assert entry.value == policy.encode()
    finally:
        d.stop()
    names = sorted(listdir(state))
    assert names[:2] == ["journal", "lock"]
    assert len(names) == 3
    assert names[2].startswith("store.")


def listdir(path: str) -> list[str]:
    return os.listdir(path)


def store_files(state: str) -> list[str]:
    return sorted(e for e in os.listdir(state) if e.startswith("store."))


async def test_payloads_stay_in_the_store_file_and_the_journal_holds_metadata(
    broker: DaemonProcess, sock: str
) -> None:
    state = broker.state_dir
    assert state is not None
    payloads = [os.urandom(60_000) for _ in range(64)]  # ~3.7 MiB, all pending
    async with bus_on(sock) as bus:
        stream = await bus.pubsub.subscribe("big.>", "keeper")
        await stream.close()
        for i, p in enumerate(payloads):
            await bus.pubsub.publish(f"big.{i}", p)
        await bus.kv.put("b", "k", b"flushed")  # answered: the journal is written
        assert size_of(os.path.join(state, "journal")) < 64 << 10  # no payload in it
        [before] = store_files(state)
        restart(broker)
    [after] = store_files(state)  # a new store file, the old one removed
    assert after != before
    async with bus_on(sock) as bus:
        stream = await bus.pubsub.subscribe("big.>", "keeper")
        for p in payloads:
            msg = await asyncio.wait_for(stream.next(), WAIT)
            assert msg.payload == p
            await msg.ack()
        await stream.close()


async def test_a_clean_stop_gives_the_store_files_free_pages_back(
    broker: DaemonProcess, sock: str
) -> None:
    state = broker.state_dir
    assert state is not None
    async with bus_on(sock) as bus:
        stream = await bus.pubsub.subscribe("m.>", "keeper")
        for _ in range(40):  # 2.5 MiB in the store at once, then all acked
            await bus.pubsub.publish("m.x", os.urandom(60_000))
        for _ in range(40):
            msg = await asyncio.wait_for(stream.next(), WAIT)
            await msg.ack()
        await stream.close()
        await bus.pubsub.publish("m.x", b"kept" * 1000)  # still owed
    broker.stop()
    [store] = store_files(state)
    assert os.stat(os.path.join(state, store)).st_blocks * 512 < 1 << 20  # resident: < 1 MiB
    broker.start()
    async with bus_on(sock) as bus:
        stream = await bus.pubsub.subscribe("m.>", "keeper")
        msg = await asyncio.wait_for(stream.next(), WAIT)
        assert msg.payload == b"kept" * 1000
        await msg.ack()
        await stream.close()


async def test_the_store_size_may_change_between_starts(sock: str) -> None:
    small = [a for a in SMALL_ARGS if not a.startswith("--store-size")]
    d = DaemonProcess(sock, *small, "--store-size", str(8 << 20))
    d.start()
    try:
        async with bus_on(sock) as bus:
            await (await bus.pubsub.subscribe("s.>", "keeper")).close()
            for i in range(10):
                await bus.pubsub.publish(f"s.{i}", b"%d" % i * 1000)
        d.stop()
        d.args = (*small, "--store-size", str(16 << 20))
        d.start()
        state = d.state_dir
        assert state is not None
        [store] = store_files(state)
        assert size_of(os.path.join(state, store)) == 16 << 20
        async with bus_on(sock) as bus:
            stream = await bus.pubsub.subscribe("s.>", "keeper")
            for i in range(10):
                msg = await asyncio.wait_for(stream.next(), WAIT)
                assert msg.payload == b"%d" % i * 1000
                await msg.ack()
            await stream.close()
    finally:
        d.stop()
        d.forget()


def test_a_store_region_that_fails_its_crc_loses_only_its_messages(
    sock: str, tmp_path: Any
) -> None:
    from klieo_shm.daemon._config import on_memory_fs

    if on_memory_fs(str(tmp_path)):
        pytest.skip("crc32s are kept only for a state directory on a disk")
    state = str(tmp_path / "state")
    d = DaemonProcess(sock, *SMALL_ARGS, "--state-dir", state)

    async def publish() -> None:
        async with bus_on(sock) as bus:
            await (await bus.pubsub.subscribe("c.>", "keeper")).close()
            for word in (b"first", b"second", b"third"):
                await bus.pubsub.publish("c.x", word * 100)

    async def receive() -> list[bytes]:
        async with bus_on(sock) as bus:
            stream = await bus.pubsub.subscribe("c.>", "keeper")
            await bus.pubsub.publish("c.x", b"after")  # delivered after what was owed
            got = []
            while not got or got[-1] != b"after":
                msg = await asyncio.wait_for(stream.next(), WAIT)
                got.append(msg.payload)
                await msg.ack()
            await stream.close()
            return got

    d.start()
    try:
        asyncio.run(publish())
        d.kill()
        [store] = store_files(state)
        path = os.path.join(state, store)
        with open(path, "rb") as f:
            at = f.read().index(b"second" * 100)
        overwrite(path, at + 50, b"X")  # the region no longer matches its crc32
        d.start()
        assert asyncio.run(receive()) == [b"first" * 100, b"third" * 100, b"after"]
    finally:
        d.stop()


@pytest.mark.parametrize("damage", ["empty", "zeroed header", "gone"])
async def test_a_damaged_store_file_loses_its_messages_but_not_the_broker(
    broker: DaemonProcess, sock: str, damage: str
) -> None:
    state = broker.state_dir
    assert state is not None
    async with bus_on(sock) as bus:
        await (await bus.pubsub.subscribe("d.>", "keeper")).close()
        await bus.pubsub.publish("d.x", b"before")
        await bus.kv.put("b", "k", b"kept")
    broker.kill()
    [store] = store_files(state)
    path = os.path.join(state, store)
    if damage == "gone":
        os.unlink(path)
    elif damage == "empty":
        os.truncate(path, 0)
    else:
        overwrite(path, 0, bytes(64))
    broker.start()
    async with bus_on(sock) as bus:
        entry = await bus.kv.get("b", "k")  # the rest of the state is back
        assert entry is not None
        assert entry.value == b"kept"
        stream = await bus.pubsub.subscribe("d.>", "keeper")
        await bus.pubsub.publish("d.x", b"after")
        msg = await asyncio.wait_for(stream.next(), WAIT)
        assert msg.payload == b"after"  # "before" is lost with its store
        await msg.ack()
        await stream.close()


def test_a_tail_that_frames_well_but_does_not_decode_ends_the_journal(sock: str) -> None:
    from klieo_shm.daemon._journal import KV_PUT, Journal
    from klieo_shm.layout.journal import frame_record

    state = os.path.join(os.path.dirname(sock), "j")
    journal = Journal(state, "never")
    try:
        journal.load()
        journal.rewrite([([KV_PUT, "b", "k", b"v", 1], b"")])
    finally:
        journal.close()
    append(os.path.join(state, "journal"), frame_record(b"\xc1garbage"))  # 0xc1: never valid
    append(os.path.join(state, "journal"), frame_record(b"\x92\x63\x01"))  # [99, 1]: no such op
    again = Journal(state, "never")
    try:
        assert again.load() == [[KV_PUT, "b", "k", b"v", 1]]
    finally:
        again.close()


async def test_a_clean_stop_keeps_claims_and_leases_for_their_live_holders(
    broker: DaemonProcess, sock: str
) -> None:
    async with bus_on(sock) as bus:
        await bus.jobs.enqueue("q", Job(b"j", max_attempts=1))
        job = await bus.jobs.claim("q", "w", 60.0)
        assert job is not None
        lease = await bus.kv.lease("b", "held", 60.0)
        broker.stop()  # SIGTERM: the broker drops its clients, but not in the journal
        broker.start()
        await settle(bus)
        stats = await bus.jobs.stats("q")
        assert (stats.ready, stats.claimed, stats.dead) == (0, 1, 0)
        await job.ack()  # still this process's claim
        with pytest.raises(klieo_shm.Conflict):
            await bus.kv.lease("b", "held", 5.0)
        await lease.release()


async def test_acks_survive_a_kill_right_after_them(broker: DaemonProcess, sock: str) -> None:
    async with bus_on(sock) as bus:
        stream = await bus.pubsub.subscribe("quiet.>", "d")
        await bus.pubsub.publish("quiet.a", b"x")
        msg = await asyncio.wait_for(stream.next(), WAIT)
        await msg.ack()
        await bus.jobs.enqueue("q", Job(b"j"))
        job = await bus.jobs.claim("q", "w", 60.0)
        assert job is not None
        await job.ack()
        # make sure the broker has read both acks: a call after them is answered after them
        assert (await bus.jobs.stats("q")).claimed == 0
        await stream.close()
    restart(broker)
    async with bus_on(sock) as bus:
        assert (await bus.jobs.stats("q")).ready == 0
        stream = await bus.pubsub.subscribe("quiet.>", "d")
        with pytest.raises(klieo_shm.Timeout):
            await stream.next(timeout=0.5)  # a bound, not a wait for an event: nothing comes
        await stream.close()


async def test_an_ack_without_an_answer_is_on_file_once_the_broker_read_it(sock: str) -> None:
    import msgpack
    from shm_helpers import running_broker

    from klieo_shm.daemon._journal import ACKED, JOB_ACK
    from klieo_shm.layout.journal import scan_records

    def ops_on_file() -> set[int]:
        with open(os.path.join(default_state_dir(sock), "journal"), "rb") as f:
            data = f.read()
        return {msgpack.unpackb(meta)[0] for _, meta, _ in scan_records(data)}

    async with running_broker(sock, **SMALL) as server, bus_on(sock) as bus:
        stream = await bus.pubsub.subscribe("quiet.>", "d")
        await bus.pubsub.publish("quiet.a", b"x")
        msg = await asyncio.wait_for(stream.next(), WAIT)
        await bus.jobs.enqueue("q", Job(b"j"))
        job = await bus.jobs.claim("q", "w", 60.0)
        assert job is not None
        assert not {ACKED, JOB_ACK} & await asyncio.to_thread(ops_on_file)
        broker = server.broker
        read = asyncio.Event()
        receive = broker.receive

        def noting(session: Any, data: Any) -> bool:
            keep = receive(session, data)
            read.set()  # waiters run after this read's handling (and its flushes) is done
            return keep

        broker.receive = noting  # type: ignore[method-assign]
        await msg.ack()  # neither ack gets an answer that would write the journal
        await job.ack()
        consumer, queue = broker.pubsub.consumers["d"], broker.jobs.queues["q"]
        while consumer.outstanding or queue.jobs:  # until the broker has read both acks
            read.clear()
            await asyncio.wait_for(read.wait(), WAIT)
        assert {ACKED, JOB_ACK} <= await asyncio.to_thread(ops_on_file)
        await stream.close()
