"""The shm JobQueue client: prefetch and giving back, cancelled claims,
pipelined enqueues, fenced resolutions near the deadline, hostile calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from shm_helpers import RawClient, running_broker

import klieo_shm
from klieo_shm import Job
from klieo_shm.daemon import BrokerServer
from klieo_shm.protocol import Call, Error, Event, Result


async def _claim_and_ack(
    jobs: klieo_shm.JobQueue, queue: str, worker: str, ttl: float, n: int
) -> None:
    """``n`` claims of one job, each acked, in a tight loop: the client starts to prefetch."""
    for _ in range(n):
        job = await jobs.claim(queue, worker, ttl)
        assert job is not None
        await job.ack()


def _on_park(server: BrokerServer) -> asyncio.Event:
    """An event set when the broker parks a claim (no job ready: it waits)."""
    state = server.broker.jobs
    parked = asyncio.Event()
    claim = state.claim

    def noting(*args: Any, **kwargs: Any) -> Any:
        answer = claim(*args, **kwargs)
        if answer is None:
            parked.set()
        return answer

    state.claim = noting  # type: ignore[method-assign]
    return parked


def _raw_call(sock: str, call: Call) -> list[Event]:
    """One call from a raw connection (run in a thread: the broker runs in
    the test's loop); the events that came back."""
    with RawClient(sock) as raw:
        raw.hello()
        raw.send(call)
        return raw.read(1)


async def test_a_fast_worker_gets_several_jobs_per_round_trip_and_close_gives_back_the_rest(
    sock: str,
) -> None:
    async with running_broker(sock), await klieo_shm.connect(f"shm://{sock}") as producer:
        ids = await asyncio.gather(
            *(producer.jobs.enqueue("deep", Job(b"%d" % i)) for i in range(2000))
        )
        assert len(set(ids)) == 2000
        worker = await klieo_shm.connect(f"shm://{sock}")
        for _ in range(50):
            job = await worker.jobs.claim("deep", "fast", 30.0)
            assert job is not None
            await job.ack()
        stats = await worker.jobs.stats("deep")  # same bus: after its acks
        prefetched = stats.claimed
        assert prefetched > 0, "a worker claiming in a tight loop should prefetch"
        assert stats.ready + prefetched == 2000 - 50

        await worker.close()

        stats = await producer.jobs.stats("deep")
        assert (stats.ready, stats.claimed) == (1950, 0)
        attempts = set()
        for _ in range(prefetched):
            job = await producer.jobs.claim("deep", "next", 30.0)
            assert job is not None
            attempts.add(job.attempt)
        assert attempts == {1}, "giving back unstarted claims must not count attempts"


async def test_prefetched_claims_not_handed_out_go_back_at_half_lease_without_an_attempt(
    sock: str,
) -> None:
    async with running_broker(sock), await klieo_shm.connect(f"shm://{sock}") as producer:
        await asyncio.gather(*(producer.jobs.enqueue("slow", Job(b"%d" % i)) for i in range(200)))
        async with await klieo_shm.connect(f"shm://{sock}") as worker:
            await _claim_and_ack(worker.jobs, "slow", "fast", 1.0, 20)
            held = await worker.jobs.claim("slow", "fast", 1.0)  # then one job runs long
            assert held is not None
            assert (await worker.jobs.stats("slow")).claimed > 1, "expected a prefetch"
            # Another worker gets the buffered jobs once half their lease is
            # over, as first attempts: nothing expired, no attempt was spent.
            other = None
            for _ in range(10):
                other = await producer.jobs.claim("slow", "other", 30.0)
                if other is not None:
                    break
            assert other is not None
            assert other.attempt == 1
            await other.ack()
            await held.ack()


async def test_a_cancelled_claim_leaves_nothing_claimed(sock: str) -> None:
    async with running_broker(sock) as server, await klieo_shm.connect(f"shm://{sock}") as bus:
        parked = _on_park(server)
        claiming = asyncio.ensure_future(bus.jobs.claim("idle", "w", 30.0))
        await asyncio.wait_for(parked.wait(), 10.0)  # parked in the broker: the case under test
        claiming.cancel()
        with pytest.raises(asyncio.CancelledError):
            await claiming

        await bus.jobs.enqueue("idle", Job(b"later"))
        job = await bus.jobs.claim("idle", "w", 30.0)

        assert job is not None
        assert job.attempt == 1
        assert (await bus.jobs.stats("idle")).claimed == 1
        await job.ack()


async def test_an_ack_is_seen_by_the_next_call_on_the_same_bus(sock: str) -> None:
    async with running_broker(sock), await klieo_shm.connect(f"shm://{sock}") as bus:
        await bus.jobs.enqueue("seen", Job(b"x"))
        job = await bus.jobs.claim("seen", "w", 30.0)
        assert job is not None

        await job.ack()  # queued, not awaited: the broker must still see it first
        stats = await bus.jobs.stats("seen")

        assert (stats.ready, stats.claimed) == (0, 0)


async def test_a_stale_claim_of_another_session_cannot_be_resolved(sock: str) -> None:
    async with running_broker(sock), await klieo_shm.connect(f"shm://{sock}") as bus:
        job_id = await bus.jobs.enqueue("mine", Job(b"x"))
        job = await bus.jobs.claim("mine", "w", 30.0)
        assert job is not None
        call = Call(1, "jobs_resolve", {"r": [["mine", job_id, job.token, 0, None]]})
        [answer] = await asyncio.to_thread(_raw_call, sock, call)
        assert isinstance(answer, Result)
        assert answer.error_type == "Conflict"
        assert (await bus.jobs.stats("mine")).claimed == 1
        await job.ack()


@pytest.mark.parametrize(
    "args",
    [
        {"r": [["q", "id", "not-a-token", 0]]},
        {"r": "garbage"},
        {"q": "q", "p": [1, 2, 3]},
    ],
    ids=["short-entry", "not-a-list", "non-bytes-payloads"],
)
async def test_malformed_job_calls_fail_that_call_or_connection_only(
    sock: str, args: dict[str, object]
) -> None:
    async with running_broker(sock), await klieo_shm.connect(f"shm://{sock}") as bus:
        await bus.jobs.enqueue("ok", Job(b"x"))
        method = "jobs_enqueue" if "p" in args else "jobs_resolve"
        events = await asyncio.to_thread(_raw_call, sock, Call(1, method, args))
        assert events, "the broker must answer or close with an error"
        first = events[0]
        assert isinstance(first, Error) or (isinstance(first, Result) and first.error_type)
        job = await bus.jobs.claim("ok", "w", 30.0)
        assert job is not None
        await job.ack()


async def test_enqueue_async_pipelines_without_a_task_per_job(sock: str) -> None:
    from klieo_shm.shm import ShmJobQueue
    from klieo_shm.shm._jobs import _ENQUEUE_EAGER

    async with running_broker(sock):
        bus = await klieo_shm.connect(f"shm://{sock}")
        jobs = bus.jobs
        assert isinstance(jobs, ShmJobQueue)
        before = len(asyncio.all_tasks())
        futures = [jobs.enqueue_async("ea", Job(b"%d" % i)) for i in range(3000)]
        assert len(asyncio.all_tasks()) == before  # futures, not tasks
        # nothing awaited yet: all but the last 3000 % _ENQUEUE_EAGER went out
        assert len(jobs._enq["ea"]) == 3000 % _ENQUEUE_EAGER
        ids = await asyncio.gather(*futures)
        assert len(set(ids)) == 3000
        dup = await jobs.enqueue_async("ea", Job(b"again", dedup_key="k"))
        assert await jobs.enqueue_async("ea", Job(b"again", dedup_key="k")) == dup
        for i in range(3000):  # in call order
            job = await jobs.claim("ea", "w", 30.0)
            assert job is not None
            assert job.payload == b"%d" % i
            await job.ack()
        with pytest.raises(klieo_shm.InvalidArgument):
            jobs.enqueue_async("bad queue name!", Job(b""))
        with pytest.raises(klieo_shm.InvalidArgument):
            jobs.enqueue_async("ea", b"not a Job")  # type: ignore[arg-type]
        await bus.close()


def _claim_two(raw: RawClient, queue: str) -> list[Any]:
    """Claim two jobs of ``queue`` on a new raw connection (an explicit
    batch): the claim's answer (``claim_answer``'s columns)."""
    raw.hello()
    claim = {"q": queue, "w": "raw", "ttl": 30.0, "n": 2, "x": True, "wait": 0, "cid": 1}
    raw.send(Call(1, "jobs_claim", claim))
    [answer] = raw.read(1)
    assert isinstance(answer, Result)
    assert not answer.error_type, answer
    assert isinstance(answer.value, list)
    return answer.value


def _claim_then_resolve(sock: str, queue: str, resolve: list[list[object]]) -> list[Event]:
    """A raw connection claims two jobs of ``queue`` (an explicit batch), then
    sends ``resolve`` with ``{A}``/``{B}`` in its entries replaced by the
    claims' (id, token); the events that came back for the resolve."""
    with RawClient(sock) as raw:
        _, (a_id, b_id), _, a_token, *_ = _claim_two(raw, queue)
        claims = {"{A}": (a_id, a_token), "{B}": (b_id, a_token + 1)}
        entries = [[queue, *claims[str(e[0])], *e[1:]] for e in resolve]
        raw.send(Call(2, "jobs_resolve", {"r": entries}))
        return raw.read(1)


async def test_a_cancelled_claim_many_leaves_nothing_claimed(sock: str) -> None:
    async with running_broker(sock) as server, await klieo_shm.connect(f"shm://{sock}") as bus:
        parked = _on_park(server)
        claiming = asyncio.ensure_future(bus.jobs.claim_many("idle-batch", "w", 30.0, 10))
        await asyncio.wait_for(parked.wait(), 10.0)  # parked in the broker: the case under test
        claiming.cancel()
        with pytest.raises(asyncio.CancelledError):
            await claiming

        for i in range(3):
            await bus.jobs.enqueue("idle-batch", Job(b"%d" % i))
        got = await bus.jobs.claim_many("idle-batch", "w", 30.0, 10)

        assert [job.attempt for job in got] == [1, 1, 1]
        assert (await bus.jobs.stats("idle-batch")).claimed == 3
        await bus.jobs.ack_many(got)


async def test_claim_many_hands_out_what_claim_prefetched_first(sock: str) -> None:
    async with running_broker(sock), await klieo_shm.connect(f"shm://{sock}") as producer:
        await asyncio.gather(*(producer.jobs.enqueue("pre", Job(b"%d" % i)) for i in range(500)))
        async with await klieo_shm.connect(f"shm://{sock}") as worker:
            await _claim_and_ack(worker.jobs, "pre", "w", 30.0, 30)
            held = (await worker.jobs.stats("pre")).claimed
            assert held > 1, "expected a prefetch"

            got = await worker.jobs.claim_many("pre", "w", 30.0, 500)

            assert len(got) == held  # the buffer, without a call that claims more
            assert (await worker.jobs.stats("pre")).claimed == held
            await worker.jobs.ack_many(got)
            more = await worker.jobs.claim_many("pre", "w", 30.0, 500)
            assert len(more) == min(256, 500 - 30 - held)  # a call: up to its cap
            await worker.jobs.ack_many(more)


async def test_a_parked_claim_many_gets_the_whole_batch_that_wakes_it(sock: str) -> None:
    from klieo_shm.shm import ShmJobQueue

    url = f"shm://{sock}"
    async with (
        running_broker(sock) as server,
        await klieo_shm.connect(url) as bus,
        await klieo_shm.connect(url) as producer,
    ):
        parked = _on_park(server)
        claiming = asyncio.ensure_future(bus.jobs.claim_many("wake", "w", 30.0, 10))
        await asyncio.wait_for(parked.wait(), 10.0)  # parked in the broker: the case under test
        jobs = producer.jobs
        assert isinstance(jobs, ShmJobQueue)
        # five jobs in one loop turn: one enqueue call, one wake-up
        await asyncio.gather(*(jobs.enqueue_async("wake", Job(b"%d" % i)) for i in range(5)))

        got = await asyncio.wait_for(claiming, 10.0)

        assert sorted(job.payload for job in got) == [b"%d" % i for i in range(5)]
        await bus.jobs.ack_many(got)


def _claim_two_then_group(sock: str, queue: str, tokens_shift: tuple[int, int]) -> list[Any]:
    """A raw connection claims two jobs of ``queue`` (an explicit batch) and
    acks them as one group (``g``), the tokens moved by ``tokens_shift``:
    the claim's answer and the resolve's."""
    with RawClient(sock) as raw:
        claimed = _claim_two(raw, queue)
        _, ids, _, first, *_ = claimed
        tokens = [first + tokens_shift[0], first + 1 + tokens_shift[1]]
        raw.send(Call(2, "jobs_resolve", {"r": [], "g": [[queue, 0, ids, tokens]]}))
        [resolved] = raw.read(1)
        assert isinstance(resolved, Result)
        assert not resolved.error_type, resolved
        return [claimed, resolved.value]


async def test_a_claim_answers_by_columns_and_a_group_ack_reports_its_conflicts(
    sock: str,
) -> None:
    async with running_broker(sock), await klieo_shm.connect(f"shm://{sock}") as bus:
        a = await bus.jobs.enqueue("cols", Job(b"a", dedup_key="ka", max_attempts=3))
        b = await bus.jobs.enqueue("cols", Job(b"bb"))

        claimed, conflicts = await asyncio.to_thread(_claim_two_then_group, sock, "cols", (0, 7))

        _, ids, payloads, first, attempts, max_attempts, dedups = claimed
        assert (ids, payloads, attempts) == ([a, b], [b"a", b"bb"], 1)  # equal: one int
        assert (max_attempts, dedups) == ([3, 5], ["ka", None])  # differing: lists
        assert conflicts == [[1, first + 1 + 7, first + 1]]  # B's token was wrong: B stays
        stats = await bus.jobs.stats("cols")  # A acked; B the raw client's, or back once it left
        assert (stats.claimed + stats.ready, stats.dead) == (1, 0)


async def test_claim_many_keeps_each_jobs_attempt_and_options(sock: str) -> None:
    async with running_broker(sock), await klieo_shm.connect(f"shm://{sock}") as bus:
        jobs = bus.jobs
        await jobs.enqueue("mixed", Job(b"first", max_attempts=4))
        retried = await jobs.claim("mixed", "w", 30.0)
        assert retried is not None
        await retried.nak()  # back at the head, attempt 2 next
        await jobs.enqueue("mixed", Job(b"second", dedup_key="k2"))
        await jobs.enqueue("mixed", Job(b"third"))

        got = await jobs.claim_many("mixed", "w", 30.0, 10)

        assert [(j.payload, j.attempt, j.max_attempts, j.dedup_key) for j in got] == [
            (b"first", 2, 4, None),
            (b"second", 1, 5, "k2"),
            (b"third", 1, 5, None),
        ]
        assert len({j.token for j in got}) == 3
        await got[0].heartbeat()  # one job's own lease; the others keep the batch's
        await jobs.ack_many(got)
        assert (await jobs.stats("mixed")).claimed == 0


def _ack_a_then_a_bad_id(sock: str, queue: str) -> list[Event]:
    """A raw connection claims two jobs of ``queue`` and acks them as one
    group whose second id cannot be an id (a list): the events that came back."""
    with RawClient(sock) as raw:
        _, (a_id, _), _, first, *_ = _claim_two(raw, queue)
        group = [queue, 0, [a_id, ["not", "an", "id"]], [first, first + 1]]
        raw.send(Call(2, "jobs_resolve", {"g": [group]}))
        return raw.read(1)


@pytest.mark.parametrize("form", ["entries", "group"])
async def test_a_resolve_failing_after_an_ack_keeps_the_broker_counts_right(
    sock: str, form: str
) -> None:
    async with running_broker(sock) as server, await klieo_shm.connect(f"shm://{sock}") as bus:
        await bus.jobs.enqueue("counted", Job(b"aaaa"))
        await bus.jobs.enqueue("counted", Job(b"bbbbbbbb"))
        jobs = server.broker.jobs

        if form == "entries":  # an ack of A, then a nak of B with a delay the broker refuses
            [answer] = await asyncio.to_thread(
                _claim_then_resolve, sock, "counted", [["{A}", 0, None], ["{B}", 1, -1.0]]
            )
            assert isinstance(answer, Result)
            assert answer.error_type == "InvalidArgument"
        else:  # a group acking A, then an id that cannot be one: that connection closes
            [answer] = await asyncio.to_thread(_ack_a_then_a_bad_id, sock, "counted")
            assert isinstance(answer, Error)

        stats = await bus.jobs.stats("counted")  # B: still the raw client's, or back if it is gone
        assert (stats.ready + stats.claimed, stats.dead) == (1, 0)
        assert (jobs.live, jobs.live_bytes) == (1, len(b"bbbbbbbb"))
