"""Hot-path batches round-trip through both sides; framing survives any split."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from protocol_helpers import Link

from klieo_shm.protocol import (
    ACK_KIND_ACK,
    ACK_KIND_NAK,
    KV_OP_CAS,
    KV_OP_DELETE,
    KV_OP_PUT,
    PUBACK_KEPT,
    PUBACK_OK,
    AckBatch,
    ArenaGone,
    Call,
    Connection,
    DeliverBatch,
    Incoming,
    KvWrite,
    KvWritten,
    PubAck,
    PublishBatch,
    Release,
    Reply,
    Request,
    Respond,
)
from klieo_shm.protocol._frames import COUNT, MSG_DESC, OFFSET_MASK, PUB_DESC, SOURCE_SHIFT


def test_publish_batch_round_trips(ready: Link) -> None:
    pub = PublishBatch(7, 4096, 300, [(0, 0, 100, 3), (100, 4, 196, 5)], b"a.bc.d.e")
    [got] = ready.c2s(pub)
    assert isinstance(got, PublishBatch)
    assert (got.batch_no, got.region_off, got.region_len) == (7, 4096, 300)
    assert got.descs == pub.descs
    assert got.subjects == pub.subjects
    assert got.raw == b"".join(PUB_DESC.pack(*d) for d in pub.descs)  # as on the wire
    assert got.keep is False


def test_kept_batches_round_trip(ready: Link) -> None:
    pub = PublishBatch(8, 1 << 20, 300, [(16, 0, 284, 3)], b"a.b", keep=True)
    [got] = ready.c2s(pub)
    assert isinstance(got, PublishBatch)
    assert got.keep is True
    assert ready.s2c(PubAck(8, 5, 1, PUBACK_KEPT)) == [PubAck(8, 5, 1, PUBACK_KEPT)]
    assert ready.s2c(Release([8, 9])) == [Release([8, 9])]
    assert ready.s2c(ArenaGone(12)) == [ArenaGone(12)]
    # a delivery from client 12's arena: the client id rides above SOURCE_SHIFT
    off = (12 << SOURCE_SHIFT) | 4096
    [got_d] = ready.s2c(DeliverBatch(1, 1, 1, MSG_DESC.pack(5, off, 0, 284, 3), b"a.b"))
    assert isinstance(got_d, DeliverBatch)
    [(_, _, _, got_off, _, _, _)] = got_d.entries()
    assert (got_off >> SOURCE_SHIFT, got_off & OFFSET_MASK) == (12, 4096)


def test_puback_deliver_and_ack_round_trip(ready: Link) -> None:
    assert ready.s2c(PubAck(7, 100, 2, PUBACK_OK)) == [PubAck(7, 100, 2, PUBACK_OK)]
    entries = [(7, 1, 100, 64, 0, 10, 3), (8, 2, 101, 74, 0, 10, 3)]  # ids follow the first
    packed = b"".join(MSG_DESC.pack(*e[2:]) for e in entries)
    counts = b"".join(COUNT.pack(e[1]) for e in entries)
    [got] = ready.s2c(DeliverBatch(3, 2, 7, packed, b"a.ba.b", counts))
    assert isinstance(got, DeliverBatch)
    assert (got.sub_id, got.count, got.first_id, got.subjects) == (3, 2, 7, b"a.ba.b")
    assert got.entries() == entries
    # without counts every delivery is a first one
    [fresh] = ready.s2c(DeliverBatch(3, 2, 9, packed, b"a.ba.b"))
    assert isinstance(fresh, DeliverBatch)
    assert [(e[0], e[1]) for e in fresh.entries()] == [(9, 1), (10, 1)]
    ack = AckBatch([(1, 2, ACK_KIND_ACK, 0), (9, 1, ACK_KIND_NAK, 250)])
    [got_ack] = ready.c2s(ack)
    assert isinstance(got_ack, AckBatch)
    assert got_ack.ranges == ack.ranges


@given(
    call_id=st.integers(min_value=0, max_value=2**64 - 1),
    op=st.sampled_from([KV_OP_PUT, KV_OP_CAS, KV_OP_DELETE]),
    bucket=st.text(max_size=40),
    key=st.text(max_size=40),
    value=st.binary(max_size=300),
    expected=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
    revision=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_kv_write_and_written_round_trip(
    call_id: int,
    op: int,
    bucket: str,
    key: str,
    value: bytes,
    expected: int | None,
    revision: int,
) -> None:
    link = Link()
    link.handshake()
    if op != KV_OP_CAS:
        expected = None
    if op == KV_OP_DELETE:
        value = b""
    bucket = bucket.encode("utf-8", "replace").decode()  # no lone surrogates: not UTF-8
    key = key.encode("utf-8", "replace").decode()
    write = KvWrite(call_id, op, bucket, key, value, expected)
    assert link.c2s(write) == [write]
    assert link.s2c(KvWritten(call_id, revision)) == [KvWritten(call_id, revision)]


@given(
    call_id=st.integers(min_value=0, max_value=2**64 - 1),
    svc_id=st.integers(min_value=0, max_value=2**32 - 1),
    subject=st.text(max_size=60),
    error_type=st.text(max_size=30),
    payload=st.binary(max_size=300),
    timeout=st.floats(allow_nan=False),
)
def test_request_incoming_respond_and_reply_round_trip(
    call_id: int, svc_id: int, subject: str, error_type: str, payload: bytes, timeout: float
) -> None:
    link = Link()
    link.handshake()
    subject = subject.encode("utf-8", "replace").decode()  # no lone surrogates: not UTF-8
    error_type = error_type.encode("utf-8", "replace").decode()
    request = Request(call_id, subject, payload, timeout)
    respond = Respond(call_id, payload, error_type)
    incoming = Incoming(call_id, svc_id, subject, payload)
    reply = Reply(call_id, payload)
    assert link.c2s(request, respond) == [request, respond]
    assert link.s2c(incoming, reply) == [incoming, reply]


@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=30),
)
def test_any_split_of_the_byte_stream_gives_the_same_events(
    payloads: list[bytes], cuts: list[int]
) -> None:
    link = Link()
    link.handshake()
    events = [Respond(i, p) for i, p in enumerate(payloads)]
    events.append(Call(99, "ping", {"k": [1, 2]}))
    data = b"".join(link.client.send(e) for e in events)
    got = []
    pos = 0
    for cut in [*cuts, len(data)]:
        link.server.receive_data(data[pos : pos + cut])
        pos += cut
        got.extend(link.server.events())
        if pos >= len(data):
            break
    if pos < len(data):
        link.server.receive_data(data[pos:])
        got.extend(link.server.events())
    assert got == events


def test_connection_refuses_tiny_frame_limit() -> None:
    import pytest

    from klieo_shm.protocol import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        Connection("client", 10)
