from __future__ import annotations

import os

import pytest
from protocol_helpers import Link, raw_control

from klieo_shm import ProtocolError
from klieo_shm.protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    Call,
    Connection,
    Error,
    Hello,
    LocalProtocolError,
    RemoteProtocolError,
    Result,
    VersionMismatch,
    Welcome,
)


def test_handshake_moves_both_sides_to_ready(link: Link) -> None:
    link.handshake()
    assert link.client.max_frame == 1 << 21
    assert link.server.max_frame == 1 << 21


def test_server_refuses_other_protocol_version_naming_both(link: Link) -> None:
    link.server.receive_data(link.client.send(Hello(PROTOCOL_VERSION + 7, os.getpid(), "x")))
    with pytest.raises(VersionMismatch) as info:
        link.server.next_event()
    assert str(PROTOCOL_VERSION) in str(info.value)
    assert str(PROTOCOL_VERSION + 7) in str(info.value)
    assert isinstance(info.value, ProtocolError)
    # the server may still explain why, and the client sees the Error event
    err = Error("version", str(info.value))
    link.client.receive_data(link.server.send(err))
    assert link.client.events() == [err]
    assert link.client.state == "CLOSED"


def test_client_refuses_welcome_of_other_version(link: Link) -> None:
    link.c2s(Hello(PROTOCOL_VERSION, 1, "x"))
    bad = Welcome(PROTOCOL_VERSION + 1, 1, "/a1", 1, "/s", 1, 1, 1 << 20, 0, "/a")
    link.client.receive_data(link.server.send(bad))
    with pytest.raises(VersionMismatch):
        link.client.next_event()


def test_client_cannot_call_before_handshake() -> None:
    conn = Connection("client")
    with pytest.raises(LocalProtocolError):
        conn.send(Call(1, "ping", {}))


def test_server_refuses_call_before_hello(link: Link) -> None:
    link.server.receive_data(raw_control("call", 1, "x", {}))
    with pytest.raises(RemoteProtocolError, match="Call in state START"):
        link.server.next_event()
    assert link.server.next_event() is CLOSED


def test_server_cannot_send_client_events(ready: Link) -> None:
    with pytest.raises(LocalProtocolError):
        ready.server.send(Call(1, "x", {}))


def test_call_and_result_round_trip(ready: Link) -> None:
    call = Call(5, "subscribe", {"subject": "a.b", "durable": "d"})
    assert ready.c2s(call) == [call]
    res = Result(5, {"sub_id": 3})
    assert ready.s2c(res) == [res]


def test_eof_gives_closed_and_partial_frame_is_an_error(ready: Link) -> None:
    data = ready.client.send(Call(1, "x", {}))
    ready.server.receive_data(data[:-1])
    assert ready.server.next_event() is NEED_DATA
    ready.server.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        ready.server.next_event()


def test_clean_eof_gives_closed(ready: Link) -> None:
    ready.server.receive_data(b"")
    assert ready.server.next_event() is CLOSED
    assert ready.server.state == "CLOSED"
