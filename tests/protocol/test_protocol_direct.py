"""Direct request links (``Connection.direct``): no handshake, requests one
way, replies the other, nothing else."""

from __future__ import annotations

import pytest

from klieo_shm.protocol import (
    NEED_DATA,
    Call,
    Connection,
    Incoming,
    LocalProtocolError,
    RemoteProtocolError,
    Reply,
    Request,
    Respond,
    Result,
)

FRAME = 1 << 20


def test_a_direct_link_carries_a_request_and_its_reply_without_a_handshake() -> None:
    requester = Connection.direct("client", FRAME)
    server = Connection.direct("server", FRAME)
    server.receive_data(requester.send(Request(1, "svc.x", b"ask", 2.5)))
    assert server.next_event() == Request(1, "svc.x", b"ask", 2.5)
    assert server.next_event() is NEED_DATA
    requester.receive_data(server.send(Reply(1, b"answer")))
    requester.receive_data(server.send(Result(2, None, "HandlerError", ["svc.x", "E", "m"])))
    assert requester.events() == [
        Reply(1, b"answer"),
        Result(2, None, "HandlerError", ["svc.x", "E", "m"]),
    ]


@pytest.mark.parametrize(
    ("role", "event"),
    [
        ("client", Call(1, "ping", {})),
        ("client", Respond(1, b"x")),
        ("server", Incoming(1, 1, "svc.x", b"x")),
        ("server", Request(1, "svc.x", b"x", 1.0)),
    ],
)
def test_a_direct_link_sends_only_requests_one_way_and_answers_the_other(
    role: str, event: object
) -> None:
    conn = Connection.direct(role, FRAME)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        conn.send(event)  # type: ignore[arg-type]


def test_a_server_on_a_direct_link_refuses_a_call() -> None:
    broker_side = Connection("client")  # encodes a Call as a broker's client would
    broker_side.state = "READY"
    server = Connection.direct("server", FRAME)
    server.receive_data(broker_side.send(Call(1, "ping", {})))
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    assert server.state == "ERROR"


def test_neither_side_of_a_direct_link_sends_or_takes_an_error_frame() -> None:
    from klieo_shm.protocol import Error

    with pytest.raises(LocalProtocolError):
        Connection.direct("server", FRAME).send(Error("x", "y"))
    broker_side = Connection("server")
    broker_side.state = "READY"
    requester = Connection.direct("client", FRAME)
    requester.receive_data(broker_side.send(Error("x", "y")))
    with pytest.raises(RemoteProtocolError):
        requester.next_event()
