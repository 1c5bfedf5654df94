"""Malformed input from the peer: each raises RemoteProtocolError and leaves
the connection in state ERROR, never crashes or hangs."""

from __future__ import annotations

import struct

import msgpack
import pytest
from protocol_helpers import Link, raw_control, raw_frame

from klieo_shm.protocol import (
    CLOSED,
    KV_OP_CAS,
    KV_OP_DELETE,
    KV_OP_PUT,
    Call,
    Error,
    KvWrite,
    LocalProtocolError,
    RemoteProtocolError,
)
from klieo_shm.protocol._frames import (
    DELIVER_HEAD,
    INCOMING_HEAD,
    KIND_DELIVER,
    KIND_INCOMING,
    KIND_KV_WRITE,
    KIND_KV_WRITTEN,
    KIND_REPLY,
    KIND_REQUEST,
    KIND_RESPOND,
    KV_WRITE_HEAD,
    MAX_BATCH,
    MSG_DESC,
    REQUEST_HEAD,
    RESPOND_HEAD,
)


def _expect_remote_error(link: Link, data: bytes, match: str) -> None:
    link.server.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=match):
        link.server.next_event()
    assert link.server.state == "ERROR"
    assert link.server.next_event() is CLOSED
    # the server can still tell the client why
    link.client.receive_data(link.server.send(Error("protocol", "bye")))
    assert link.client.events() == [Error("protocol", "bye")]


def test_oversized_frame_is_refused_from_its_header(ready: Link) -> None:
    head = struct.pack("<IB", ready.server.max_frame + 1, 1)
    _expect_remote_error(ready, head, "over the limit")


def test_unknown_frame_kind(ready: Link) -> None:
    _expect_remote_error(ready, raw_frame(99, b""), "unknown frame kind 99")


def test_garbage_msgpack(ready: Link) -> None:
    _expect_remote_error(ready, raw_frame(1, b"\xc1\xc1\xc1"), "not valid msgpack")


def test_control_frame_that_is_not_an_array(ready: Link) -> None:
    _expect_remote_error(ready, raw_frame(1, msgpack.packb({"op": "call"})), "array")


def test_unknown_op(ready: Link) -> None:
    _expect_remote_error(ready, raw_control("explode", 1), "unknown op 'explode'")


def test_wrong_field_count(ready: Link) -> None:
    _expect_remote_error(ready, raw_control("call", 1, "x"), "takes 3 fields")


def test_wrong_field_type(ready: Link) -> None:
    _expect_remote_error(ready, raw_control("call", "one", "x", {}), "'call_id' must be int")


def test_event_of_the_wrong_direction(ready: Link) -> None:
    _expect_remote_error(ready, raw_control("result", 1, None, "", []), "Result in state READY")


def test_truncated_publish_batch(ready: Link) -> None:
    body = struct.pack("<QQQIB", 1, 0, 10, 3, 0) + b"\0" * 5
    _expect_remote_error(ready, raw_frame(2, body), "truncated publish")


def test_publish_batch_over_max_entries(ready: Link) -> None:
    body = struct.pack("<QQQIB", 1, 0, 10, MAX_BATCH + 1, 0)
    _expect_remote_error(ready, raw_frame(2, body), "limit")


def test_publish_batch_with_unknown_flags(ready: Link) -> None:
    body = struct.pack("<QQQIB", 1, 0, 10, 0, 0x82)
    _expect_remote_error(ready, raw_frame(2, body), "unknown flags 0x82")


def test_ack_with_unknown_kind(ready: Link) -> None:
    body = struct.pack("<I", 1) + struct.pack("<QIBI", 1, 1, 9, 0)
    _expect_remote_error(ready, raw_frame(5, body), "unknown ack kind 9")


def test_ack_with_trailing_bytes(ready: Link) -> None:
    body = struct.pack("<I", 0) + b"x"
    _expect_remote_error(ready, raw_frame(5, body), "trailing")


def _kv_write(op: int, has_expected: int, bucket: bytes, key: bytes, value: bytes) -> bytes:
    head = KV_WRITE_HEAD.pack(1, op, has_expected, len(bucket), len(key), 0)
    return raw_frame(KIND_KV_WRITE, head + bucket + key + value)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (raw_frame(KIND_KV_WRITE, b"\0" * 5), "truncated kv write"),
        (_kv_write(9, 0, b"b", b"k", b""), "unknown kv write op 9"),
        (_kv_write(KV_OP_PUT, 1, b"b", b"k", b"v"), "has_expected 1"),
        (_kv_write(KV_OP_CAS, 2, b"b", b"k", b"v"), "has_expected 2"),
        (_kv_write(KV_OP_DELETE, 0, b"b", b"k", b"v"), "carries 1 value bytes"),
        (_kv_write(KV_OP_PUT, 0, b"b\xff", b"k", b""), "not UTF-8"),
        (
            raw_frame(KIND_KV_WRITE, KV_WRITE_HEAD.pack(1, KV_OP_PUT, 0, 10, 10, 0) + b"short"),
            "names do not fit",
        ),
    ],
    ids=["truncated", "unknown-op", "expected-on-put", "bad-flag", "delete-value", "utf8", "fit"],
)
def test_malformed_kv_write(ready: Link, data: bytes, match: str) -> None:
    _expect_remote_error(ready, data, match)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (raw_frame(KIND_REQUEST, b"\0" * 17), "truncated request"),
        (raw_frame(KIND_REQUEST, REQUEST_HEAD.pack(1, 1.0, 5) + b"a.b"), "names do not fit"),
        (raw_frame(KIND_REQUEST, REQUEST_HEAD.pack(1, 1.0, 2) + b"\xc3("), "not UTF-8"),
        (raw_frame(KIND_RESPOND, b"\0" * 9), "truncated respond"),
        (raw_frame(KIND_RESPOND, RESPOND_HEAD.pack(1, 9) + b"Oops"), "names do not fit"),
    ],
    ids=["request-truncated", "request-fit", "request-utf8", "respond-truncated", "respond-fit"],
)
def test_malformed_request_or_respond(ready: Link, data: bytes, match: str) -> None:
    _expect_remote_error(ready, data, match)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (raw_frame(KIND_INCOMING, b"\0" * 13), "truncated incoming"),
        (raw_frame(KIND_INCOMING, INCOMING_HEAD.pack(1, 1, 4) + b"a"), "names do not fit"),
        (raw_frame(KIND_REPLY, b"\0" * 7), "truncated reply"),
    ],
    ids=["incoming-truncated", "incoming-fit", "reply-truncated"],
)
def test_malformed_incoming_or_reply_from_the_server(ready: Link, data: bytes, match: str) -> None:
    ready.client.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=match):
        ready.client.next_event()
    assert ready.client.state == "ERROR"


def test_kv_written_of_the_wrong_size(ready: Link) -> None:
    ready.client.receive_data(raw_frame(KIND_KV_WRITTEN, b"\0" * 15))
    with pytest.raises(RemoteProtocolError, match="kv written frame of 15 bytes"):
        ready.client.next_event()
    assert ready.client.state == "ERROR"


def test_kv_frames_of_the_wrong_direction(ready: Link) -> None:
    with pytest.raises(LocalProtocolError, match="cannot send KvWrite in state READY"):
        ready.server.send(KvWrite(1, KV_OP_PUT, "b", "k", b""))
    _expect_remote_error(ready, raw_frame(KIND_KV_WRITTEN, b"\0" * 16), "KvWritten in state")


def test_truncated_frame_header_waits_for_more(ready: Link) -> None:
    ready.server.receive_data(b"\x01\x00")
    assert ready.server.events() == []
    assert ready.server.state == "READY"


def test_events_before_a_bad_frame_are_delivered_first(ready: Link) -> None:
    good = Call(1, "ping", {})
    ready.server.receive_data(ready.client.send(good) + raw_frame(99, b""))
    assert ready.server.next_event() == good
    with pytest.raises(RemoteProtocolError, match="unknown frame kind"):
        ready.server.next_event()


@pytest.mark.parametrize(
    ("flags", "tail", "match"),
    [
        (0x02, b"", "unknown flags 0x2"),
        (0x01, b"\0" * 4, "cannot hold 2"),  # counts announced, one of two present
    ],
)
def test_deliver_frame_with_bad_flags_or_missing_counts(
    ready: Link, flags: int, tail: bytes, match: str
) -> None:
    body = DELIVER_HEAD.pack(1, 2, 10, flags) + MSG_DESC.pack(1, 0, 0, 1, 1) * 2 + tail
    ready.client.receive_data(raw_frame(KIND_DELIVER, body))
    with pytest.raises(RemoteProtocolError, match=match):
        ready.client.next_event()
