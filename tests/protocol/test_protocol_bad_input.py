"""Malformed input from the peer: each raises RemoteProtocolError and leaves
the connection in state ERROR, never crashes or hangs."""

from __future__ import annotations

import struct

import msgpack
import pytest
from protocol_helpers import Link, raw_control, raw_frame

from klieo_shm.protocol import CLOSED, Call, Error, RemoteProtocolError
from klieo_shm.protocol._frames import MAX_BATCH


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
    body = struct.pack("<QQQI", 1, 0, 10, 3) + b"\0" * 5
    _expect_remote_error(ready, raw_frame(2, body), "truncated publish")


def test_publish_batch_over_max_entries(ready: Link) -> None:
    body = struct.pack("<QQQI", 1, 0, 10, MAX_BATCH + 1)
    _expect_remote_error(ready, raw_frame(2, body), "limit")


def test_ack_with_unknown_kind(ready: Link) -> None:
    body = struct.pack("<I", 1) + struct.pack("<QIBI", 1, 1, 9, 0)
    _expect_remote_error(ready, raw_frame(5, body), "unknown ack kind 9")


def test_ack_with_trailing_bytes(ready: Link) -> None:
    body = struct.pack("<I", 0) + b"x"
    _expect_remote_error(ready, raw_frame(5, body), "trailing")


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
