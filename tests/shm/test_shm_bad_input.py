"""Hostile or broken input: a clear error, that one connection closed, the
broker and every other client unharmed."""

from __future__ import annotations

import socket
import struct

import msgpack
import pytest
from shm_helpers import SMALL, RawClient

from klieo_shm.layout import SLOT
from klieo_shm.protocol import (
    ACK_KIND_ACK,
    KV_OP_CAS,
    KV_OP_DELETE,
    KV_OP_PUT,
    PROTOCOL_VERSION,
    AckBatch,
    Call,
    Error,
    Incoming,
    KvWrite,
    KvWritten,
    PublishBatch,
    Reply,
    Request,
    Respond,
    Result,
)
from klieo_shm.shm._maps import Mapping


def _expect_closed_with(client: RawClient, text: str) -> None:
    events, raw = client.read_until_eof()
    errors = [e for e in events if isinstance(e, Error)]
    assert errors, f"no Error event before close; raw tail {raw[-200:]!r}"
    assert text in errors[-1].message


def _broker_still_serves(path: str) -> None:
    with RawClient(path) as other:
        other.hello()
        other.send(Call(1, "ping", {}))
        [res] = other.read(1)
        assert isinstance(res, Result)
        assert res.error_type == ""


def _frame(kind: int, body: bytes) -> bytes:
    return struct.pack("<IB", len(body), kind) + body


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (struct.pack("<IB", 1 << 30, 1), "over the limit"),
        (_frame(77, b""), "unknown frame kind 77"),
        (_frame(1, b"\xc1\xc1"), "not valid msgpack"),
        (_frame(1, msgpack.packb(["explode", 1])), "unknown op 'explode'"),
        (_frame(1, msgpack.packb(["result", 1, None, "", []])), "Result in state READY"),
    ],
    ids=["oversized", "unknown-kind", "garbage-msgpack", "unknown-op", "wrong-direction"],
)
def test_malformed_frame_closes_only_that_connection(daemon: str, data: bytes, text: str) -> None:
    with RawClient(daemon) as bad:
        bad.hello()
        bad.sock.sendall(data)
        _expect_closed_with(bad, text)
    _broker_still_serves(daemon)


def test_truncated_frame_then_eof_is_reported(daemon: str) -> None:
    with RawClient(daemon) as bad:
        bad.hello()
        bad.sock.sendall(bad.conn.send(Call(1, "ping", {}))[:-2])
        bad.sock.shutdown(socket.SHUT_WR)
        _expect_closed_with(bad, "inside a frame")
    _broker_still_serves(daemon)


def test_other_protocol_version_is_refused_naming_both(daemon: str) -> None:
    with RawClient(daemon) as bad:
        events = bad.hello(version=PROTOCOL_VERSION + 41)
        [err] = events
        assert isinstance(err, Error)
        assert str(PROTOCOL_VERSION) in err.message
        assert str(PROTOCOL_VERSION + 41) in err.message
    _broker_still_serves(daemon)


def test_publish_pointing_outside_the_arena_is_refused(daemon: str) -> None:
    with RawClient(daemon) as bad:
        bad.hello()
        bad.send(PublishBatch(1, 1 << 40, 100, [(16, 0, 10, 3)], b"a.b"))
        _expect_closed_with(bad, "outside the arena")
    _broker_still_serves(daemon)


def test_publish_of_bytes_not_tagged_as_this_clients_batch_is_refused(daemon: str) -> None:
    with RawClient(daemon) as bad:
        bad.hello()
        bad.send(PublishBatch(1, 0, 100, [(16, 0, 10, 3)], b"a.b"))
        _expect_closed_with(bad, "not tagged")
    _broker_still_serves(daemon)


def _tagged_region(client: RawClient, size: int) -> None:
    w = client.welcome
    assert w is not None
    arena = Mapping(w.arena_name, w.arena_size, writable=True)
    try:
        SLOT.pack_into(arena.view, 64, w.client_id, size, 1)
    finally:
        arena.close()


def test_payload_over_the_limit_is_refused(daemon: str) -> None:
    limit = SMALL["max_payload"]
    with RawClient(daemon) as bad:
        bad.hello()
        _tagged_region(bad, limit + 100)
        bad.send(PublishBatch(1, 0, limit + 100, [(16, 0, limit + 1, 3)], b"a.b"))
        _expect_closed_with(bad, "over the limit")
    _broker_still_serves(daemon)


def test_invalid_subject_in_a_publish_is_refused(daemon: str) -> None:
    with RawClient(daemon) as bad:
        bad.hello()
        _tagged_region(bad, 64)
        bad.send(PublishBatch(1, 0, 64, [(16, 0, 4, 4)], b"a..b"))
        _expect_closed_with(bad, "invalid subject")
    _broker_still_serves(daemon)


def test_ack_for_deliveries_never_made_to_this_client_is_refused(daemon: str) -> None:
    with RawClient(daemon) as bad:
        bad.hello()
        bad.send(AckBatch([(1, 5, ACK_KIND_ACK, 0)]))
        _expect_closed_with(bad, "never delivered to this client")
    _broker_still_serves(daemon)


def test_bad_call_arguments_get_an_error_result_not_a_crash(daemon: str) -> None:
    with RawClient(daemon) as client:
        client.hello()
        client.send(Call(1, "subscribe", {"sub_id": 1, "subject": "a..b", "durable": "d"}))
        [res] = client.read(1)
        assert isinstance(res, Result)
        assert res.error_type == "InvalidArgument"
        client.send(Call(2, "no_such_call", {}))
        [res] = client.read(1)
        assert isinstance(res, Result)
        assert res.error_type == "InvalidArgument"
        client.send(Call(3, "subscribe", {}))
        _expect_closed_with(client, "bad arguments")
    _broker_still_serves(daemon)


def test_bad_kv_writes_get_an_error_result_and_the_connection_stays(daemon: str) -> None:
    limit = SMALL["max_payload"]
    with RawClient(daemon) as client:
        client.hello()
        client.send(KvWrite(1, KV_OP_PUT, "bad bucket", "k", b"v"))
        client.send(KvWrite(2, KV_OP_CAS, "b", "k*", b"v", None))
        client.send(KvWrite(3, KV_OP_PUT, "b", "k", b"x" * (limit + 1)))
        client.send(KvWrite(4, KV_OP_CAS, "b", "k", b"v", 7))
        client.send(KvWrite(5, KV_OP_PUT, "b", "k", b"v"))
        client.send(KvWrite(6, KV_OP_DELETE, "b", "absent", b""))
        got = client.read(6)
        assert [type(e).__name__ for e in got] == ["Result"] * 4 + ["KvWritten"] * 2
        assert [getattr(e, "error_type", "") for e in got[:4]] == [
            "InvalidArgument",
            "InvalidArgument",
            "PayloadTooLarge",
            "Conflict",
        ]
        assert [e.call_id for e in got] == [1, 2, 3, 4, 5, 6]  # type: ignore[union-attr]
        assert got[4] == KvWritten(5, 1)
        assert got[5] == KvWritten(6, 0)  # an absent key: no revision taken
    _broker_still_serves(daemon)


def test_bad_requests_get_an_error_result_and_the_connection_stays(daemon: str) -> None:
    with RawClient(daemon) as client:
        client.hello()
        client.send(Request(1, "a..b", b"x", 1.0))
        client.send(Request(2, "nobody.serves", b"x", 1.0))
        client.send(Request(3, "nobody.serves", b"x", float("nan")))
        client.send(Request(4, "nobody.serves", b"x", -1.0))
        got = client.read(4)
        assert [getattr(e, "error_type", "") for e in got] == [
            "InvalidArgument",
            "NotFound",
            "InvalidArgument",
            "InvalidArgument",
        ]
        assert [e.call_id for e in got] == [1, 2, 3, 4]  # type: ignore[union-attr]
    _broker_still_serves(daemon)


def test_a_reply_to_a_request_sent_elsewhere_is_refused(daemon: str) -> None:
    with RawClient(daemon) as server, RawClient(daemon) as intruder, RawClient(daemon) as asker:
        for c in (server, intruder, asker):
            c.hello()
        server.send(Call(1, "serve", {"subject": "svc.a", "svc_id": 7}))
        assert server.read(1) == [Result(1, {})]
        asker.send(Request(1, "svc.a", b"ping", 30.0))
        [incoming] = server.read(1)
        assert isinstance(incoming, Incoming)
        assert (incoming.svc_id, incoming.subject, incoming.payload) == (7, "svc.a", b"ping")
        intruder.send(Respond(incoming.req_id, b"forged"))
        _expect_closed_with(intruder, "not sent to you")
        server.send(Respond(incoming.req_id, b"pong"))
        assert asker.read(1) == [Reply(1, b"pong")]
    _broker_still_serves(daemon)


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("serve", {"subject": "svc.a", "svc_id": -1}),
        ("serve", {"subject": "svc.a", "svc_id": 2**32}),
        ("subscribe", {"subject": "a.b", "durable": "d", "sub_id": 2**32}),
        ("unsubscribe", {"sub_id": True}),
    ],
    ids=["svc-negative", "svc-u32", "sub-u32", "sub-bool"],
)
def test_ids_that_frames_cannot_carry_are_refused(daemon: str, method: str, args: dict) -> None:
    with RawClient(daemon) as client:
        client.hello()
        client.send(Call(1, method, args))
        [res] = client.read(1)
        assert isinstance(res, Result)
        assert res.error_type == "InvalidArgument"
        assert "2**32 - 1" in str(res.error_args)
    _broker_still_serves(daemon)
