"""Request/reply: replies, NotFound, Timeout, handler errors, shared
servers, and a server going away mid-request."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest

import klieo_shm

from .world import WAIT, World, at_once


def echo(payload: bytes) -> bytes:
    return b"echo:" + payload


async def test_request_returns_the_handlers_reply(world: World):
    _, requests, *_ = await world.connect()
    subject = world.subject("svc.echo")
    await requests.serve(subject, echo)

    reply = await requests.request(subject, b"hi", timeout=WAIT)

    assert reply == b"echo:hi"
    assert type(reply) is bytes


async def test_request_and_server_on_different_buses(world: World):
    _, server, *_ = await world.connect()
    _, client, *_ = await world.connect()
    subject = world.subject("svc.echo")
    await server.serve(subject, echo)

    assert await client.request(subject, b"x", timeout=WAIT) == b"echo:x"


async def test_request_accepts_bytes_like_payloads(world: World):
    _, requests, *_ = await world.connect()
    subject = world.subject("svc.echo")
    await requests.serve(subject, echo)

    assert await requests.request(subject, bytearray(b"ba"), timeout=WAIT) == b"echo:ba"
    assert await requests.request(subject, memoryview(b"mv"), timeout=WAIT) == b"echo:mv"


async def test_async_handler_reply_is_returned(world: World):
    if world.flavour == "sync":
        pytest.skip("the blocking flavour takes plain functions as handlers")
    _, requests, *_ = await world.connect()
    subject = world.subject("svc.async")

    async def handler(payload: bytes) -> bytes:
        await asyncio.sleep(0)
        return payload.upper()

    await requests.serve(subject, handler)

    assert await requests.request(subject, b"abc", timeout=WAIT) == b"ABC"


async def test_request_with_no_server_raises_not_found_at_once(world: World):
    _, requests, *_ = await world.connect()
    subject = world.subject("svc.nobody")

    with pytest.raises(klieo_shm.NotFound) as caught:
        await at_once(requests.request(subject, b"x", timeout=30.0))

    assert caught.value.name == subject


async def test_request_to_a_stopped_service_raises_not_found(world: World):
    _, requests, *_ = await world.connect()
    subject = world.subject("svc.stopped")
    service = await requests.serve(subject, echo)

    await service.stop()

    with pytest.raises(klieo_shm.NotFound):
        await at_once(requests.request(subject, b"x", timeout=30.0))


async def test_request_without_a_reply_in_time_raises_timeout(world: World):
    _, requests, *_ = await world.connect()
    subject = world.subject("svc.slow")
    release = threading.Event()

    def slow(payload: bytes) -> bytes:
        release.wait(WAIT)
        return b"late"

    await requests.serve(subject, _in_thread(world, slow))
    try:
        with pytest.raises(klieo_shm.Timeout) as caught:
            await requests.request(subject, b"x", timeout=0.3)
    finally:
        release.set()

    assert caught.value.seconds == pytest.approx(0.3)


async def test_handler_exception_reaches_the_requester_as_handler_error_with_its_message(
    world: World,
):
    _, requests, *_ = await world.connect()
    subject = world.subject("svc.fails")

    def failing(payload: bytes) -> bytes:
        raise ValueError(f"cannot handle {payload.decode()}")

    await requests.serve(subject, failing)

    with pytest.raises(klieo_shm.HandlerError) as caught:
        await requests.request(subject, b"this", timeout=WAIT)

    assert isinstance(caught.value, klieo_shm.BusError)
    assert caught.value.message == "cannot handle this"
    assert caught.value.type_name == "ValueError"
    assert "cannot handle this" in str(caught.value)


async def test_server_keeps_serving_after_a_handler_exception(world: World):
    _, requests, *_ = await world.connect()
    subject = world.subject("svc.flaky")

    def flaky(payload: bytes) -> bytes:
        if payload == b"bad":
            raise RuntimeError("bad")
        return b"ok"

    await requests.serve(subject, flaky)
    with pytest.raises(klieo_shm.HandlerError):
        await requests.request(subject, b"bad", timeout=WAIT)

    assert await requests.request(subject, b"good", timeout=WAIT) == b"ok"


async def test_servers_of_one_subject_share_requests_each_handled_once(world: World):
    _, client, *_ = await world.connect()
    subject = world.subject("svc.shared")
    handled: Counter[bytes] = Counter()
    lock = threading.Lock()

    def make(name: bytes):
        def handler(payload: bytes) -> bytes:
            with lock:
                handled[payload] += 1
            return name

        return handler

    for name in (b"a", b"b", b"c"):
        _, server, *_ = await world.connect()
        await server.serve(subject, make(name))

    replies = await asyncio.gather(
        *(client.request(subject, b"%d" % i, timeout=WAIT) for i in range(30))
    )

    assert set(replies) <= {b"a", b"b", b"c"}
    assert handled == Counter({b"%d" % i: 1 for i in range(30)})


async def test_other_server_keeps_serving_when_one_stops(world: World):
    _, client, *_ = await world.connect()
    _, one, *_ = await world.connect()
    _, two, *_ = await world.connect()
    subject = world.subject("svc.pair")
    stopping = await one.serve(subject, lambda p: b"one")
    await two.serve(subject, lambda p: b"two")

    await stopping.stop()

    replies = {await client.request(subject, b"x", timeout=WAIT) for _ in range(5)}
    assert replies == {b"two"}


async def test_stopping_a_service_twice_is_allowed(world: World):
    _, requests, *_ = await world.connect()
    service = await requests.serve(world.subject("svc.twice"), echo)

    await service.stop()
    await service.stop()


async def test_request_taken_before_stop_still_gets_its_reply(world: World):
    _, client, *_ = await world.connect()
    _, server, *_ = await world.connect()
    subject = world.subject("svc.draining")
    started, release = threading.Event(), threading.Event()

    def handler(payload: bytes) -> bytes:
        started.set()
        release.wait(WAIT)
        return b"finished"

    service = await server.serve(subject, _in_thread(world, handler))
    pending = asyncio.ensure_future(client.request(subject, b"x", timeout=WAIT))
    try:
        assert await asyncio.to_thread(started.wait, WAIT)
        stopping = asyncio.ensure_future(service.stop())
        release.set()
        assert await pending == b"finished"
        await stopping
    finally:
        release.set()


async def test_request_fails_at_once_when_the_serving_bus_closes_mid_request(world: World):
    _, client, *_ = await world.connect()
    server_bus = await world.connect()
    subject = world.subject("svc.dies")
    started, release = threading.Event(), threading.Event()

    def handler(payload: bytes) -> bytes:
        started.set()
        release.wait(WAIT)
        return b"too late"

    await server_bus.requests.serve(subject, _in_thread(world, handler))
    pending = asyncio.ensure_future(client.request(subject, b"x", timeout=30.0))
    try:
        assert await asyncio.to_thread(started.wait, WAIT)
        await server_bus.close()
        with pytest.raises((klieo_shm.Closed, klieo_shm.NotFound)):
            await at_once(pending)
    finally:
        release.set()


def _in_thread(world: World, blocking):
    """``blocking`` as a handler of the world's flavour: the blocking flavour
    already runs handlers in a thread; for the async flavour, wrap it."""
    if world.flavour == "sync":
        return blocking

    async def handler(payload: bytes) -> bytes:
        return await asyncio.to_thread(blocking, payload)

    return handler
