"""The handles' shared rules, over fake impls that record their calls:
exactly one resolution per delivery and claim, argument checks before the
impl is touched, idempotent close/stop/release, timeouts on next()."""

from __future__ import annotations

import asyncio

import pytest

from klieo_shm import (
    AlreadyAcknowledged,
    ClaimedJob,
    InvalidArgument,
    KvChange,
    KvWatch,
    Lease,
    Msg,
    MsgStream,
    Service,
    Timeout,
)


class Recorder:
    """Every impl protocol at once; records (operation, args) pairs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, name: str):
        async def record(*args: object) -> None:
            self.calls.append((name, args))

        return record


class Items:
    """A StreamImpl yielding queued items, ``None`` once closed."""

    def __init__(self, *items: object) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        for item in items:
            self.queue.put_nowait(item)
        self.closes = 0

    async def next(self) -> object:
        return await self.queue.get()

    async def close(self) -> None:
        self.closes += 1
        self.queue.put_nowait(None)


def make_msg(impl: Recorder) -> Msg:
    return Msg("s.x", b"p", {"h": "v"}, 7, 1, impl)


def make_job(impl: Recorder) -> ClaimedJob:
    return ClaimedJob("q", "id-1", b"p", 1, 42, impl)


MSG_OPS = {"ack": lambda m: m.ack(), "nak": lambda m: m.nak(0.5), "term": lambda m: m.term()}
JOB_OPS = {
    "ack": lambda j: j.ack(),
    "nak": lambda j: j.nak(0.5),
    "dead_letter": lambda j: j.dead_letter("why"),
}


@pytest.mark.parametrize("first", sorted(MSG_OPS))
@pytest.mark.parametrize("second", sorted(MSG_OPS))
async def test_msg_takes_exactly_one_resolution(first, second):
    impl = Recorder()
    msg = make_msg(impl)
    await MSG_OPS[first](msg)

    with pytest.raises(AlreadyAcknowledged) as caught:
        await MSG_OPS[second](msg)

    assert caught.value.previous == first
    assert [name for name, _ in impl.calls] == [first]
    assert msg.resolved


async def test_msg_in_progress_is_allowed_until_resolved():
    impl = Recorder()
    msg = make_msg(impl)
    await msg.in_progress()
    await msg.in_progress()
    await msg.ack()

    with pytest.raises(AlreadyAcknowledged):
        await msg.in_progress()

    assert [name for name, _ in impl.calls] == ["in_progress", "in_progress", "ack"]


async def test_msg_nak_passes_the_delay_and_defaults_to_zero():
    impl = Recorder()
    await make_msg(impl).nak()
    await make_msg(impl).nak(delay=2)

    assert impl.calls == [("nak", (0.0,)), ("nak", (2.0,))]


@pytest.mark.parametrize("delay", [-1, float("nan"), "1"])
async def test_msg_nak_with_a_bad_delay_raises_and_leaves_the_msg_unresolved(delay):
    impl = Recorder()
    msg = make_msg(impl)

    with pytest.raises(InvalidArgument):
        await msg.nak(delay)

    assert impl.calls == []
    assert not msg.resolved
    await msg.ack()


def test_msg_exposes_its_fields():
    msg = make_msg(Recorder())
    assert (msg.subject, msg.payload, msg.headers, msg.seq, msg.delivery_count) == (
        "s.x",
        b"p",
        {"h": "v"},
        7,
        1,
    )
    assert "payload_len=1" in repr(msg)


@pytest.mark.parametrize("first", sorted(JOB_OPS))
@pytest.mark.parametrize("second", sorted(JOB_OPS))
async def test_claimed_job_takes_exactly_one_resolution(first, second):
    impl = Recorder()
    job = make_job(impl)
    await JOB_OPS[first](job)

    with pytest.raises(AlreadyAcknowledged) as caught:
        await JOB_OPS[second](job)

    assert caught.value.previous == first
    assert [name for name, _ in impl.calls] == [first]


async def test_claimed_job_heartbeat_until_resolved():
    impl = Recorder()
    job = make_job(impl)
    await job.heartbeat()
    await job.dead_letter("bad")

    with pytest.raises(AlreadyAcknowledged):
        await job.heartbeat()

    assert impl.calls == [("heartbeat", ()), ("dead_letter", ("bad",))]


async def test_claimed_job_nak_with_a_bad_delay_leaves_it_unresolved():
    impl = Recorder()
    job = make_job(impl)

    with pytest.raises(InvalidArgument):
        await job.nak(-1)

    await job.ack()
    assert impl.calls == [("ack", ())]


def test_claimed_job_exposes_its_fields():
    job = ClaimedJob("q", "id-1", b"p", 2, 42, Recorder(), dedup_key="k")
    assert (job.queue, job.id, job.payload, job.attempt, job.token, job.dedup_key) == (
        "q",
        "id-1",
        b"p",
        2,
        42,
        "k",
    )


async def test_lease_release_is_idempotent_and_async_with_releases():
    impl = Recorder()
    async with Lease("b", "k", 1.0, 3, impl) as lease:
        await lease.heartbeat()
    await lease.release()

    assert [name for name, _ in impl.calls] == ["heartbeat", "release"]
    assert (lease.bucket, lease.key, lease.ttl, lease.token) == ("b", "k", 1.0, 3)


async def test_lease_async_with_releases_on_error():
    impl = Recorder()
    with pytest.raises(RuntimeError):
        async with Lease("b", "k", 1.0, 3, impl):
            raise RuntimeError("boom")

    assert [name for name, _ in impl.calls] == ["release"]


async def test_service_stop_is_idempotent_and_async_with_stops():
    impl = Recorder()
    async with Service("svc", impl) as service:
        assert service.subject == "svc"
    await service.stop()

    assert [name for name, _ in impl.calls] == ["stop"]


async def test_stream_iterates_until_the_impl_returns_none():
    stream = MsgStream(Items("a", "b", None))

    assert [item async for item in stream] == ["a", "b"]


async def test_stream_next_with_timeout_raises_timeout_carrying_the_seconds():
    stream = KvWatch(Items())

    with pytest.raises(Timeout) as caught:
        await stream.next(timeout=0.05)

    assert caught.value.seconds == 0.05
    assert caught.value.operation == "next"


async def test_stream_next_timeout_loses_no_item():
    impl = Items()
    stream = KvWatch(impl)
    with pytest.raises(Timeout):
        await stream.next(timeout=0.01)
    change = KvChange("b", "k", b"v", 1)

    impl.queue.put_nowait(change)

    assert await stream.next(timeout=1.0) is change


async def test_stream_close_is_idempotent_and_async_with_closes():
    impl = Items()
    async with MsgStream(impl) as stream:
        pass
    await stream.close()

    assert impl.closes == 1
    assert await stream.next() is None


async def test_stream_next_refuses_a_negative_timeout():
    with pytest.raises(InvalidArgument):
        await MsgStream(Items()).next(timeout=-1)
