"""Wire framing for the klieo-shmd control protocol: pure functions over bytes.

Every frame on the Unix stream socket is::

    offset  size  field
    0       4     body_len  u32 little-endian, bytes after this 5-byte header
    4       1     kind      u8, one of the KIND_* constants below
    5       n     body      n == body_len, at most the connection's max_frame

Bodies by kind:

* ``KIND_CONTROL`` -- a msgpack map with an ``"op"`` string (see ``_events``).
* ``KIND_PUBLISH`` -- a publish batch: ``PUB_HEAD`` then ``count`` x
  ``PUB_DESC`` then the subjects blob (UTF-8, concatenated, no separators).
  Payload bytes are not in the frame: they lie in the client's tx arena in
  the region ``[region_off, region_off + region_len)``; each descriptor's
  ``rel_off`` is relative to ``region_off`` and points at ``hdr_len`` bytes
  of msgpack headers followed by ``pay_len`` payload bytes. With
  ``PUB_FLAG_KEEP`` in ``flags`` the client offers to leave the region
  untouched until the broker releases it, so the broker may deliver from the
  arena instead of copying into its store (see ``PUBACK_KEPT``).
* ``KIND_PUBACK`` -- ``PUBACK`` : the broker's verdict on one publish batch.
  ``PUBACK_OK``: stored (copied), the region is the client's again;
  ``PUBACK_KEPT``: stored where it lies, the region stays the broker's until
  a ``Release`` event names the batch; ``PUBACK_FULL``: refused, no room.
* ``KIND_DELIVER`` -- ``DELIVER_HEAD`` then ``count`` x ``MSG_DESC``, then
  (when ``DELIVER_FLAG_COUNTS`` is in ``flags``) ``count`` x u32 delivery
  counts (without it every count is 1), then the subjects blob. The
  deliveries' ids are ``first_id`` ... ``first_id + count - 1``, in
  order. ``store_off`` points at ``hdr_len`` header bytes
  followed by ``pay_len`` payload bytes: in the broker's payload store when
  ``store_off >> SOURCE_SHIFT`` is 0, else in the data area of the tx arena
  of that client id, at ``store_off & OFFSET_MASK`` (a kept batch).
* ``KIND_ACK`` -- ``ACK_HEAD`` then ``count`` x ``ACK_DESC``: ranges of
  delivery ids ``[first, first + n)`` resolved the same way.
* ``KIND_KV_WRITE`` -- ``KV_WRITE_HEAD`` then the bucket and the key (UTF-8)
  then the value (the rest of the body): a KV put, cas or delete, answered
  like a ``Call`` of the same ``call_id``.
* ``KIND_KV_WRITTEN`` -- ``KV_WRITTEN``: the revision a KV write took (an
  error answers with a ``Result`` instead).
* ``KIND_REQUEST`` -- ``REQUEST_HEAD`` then the subject (UTF-8) then the
  payload: a request, answered like a ``Call`` of the same ``call_id``.
* ``KIND_INCOMING`` -- ``INCOMING_HEAD`` then the subject then the payload:
  a request handed to one server of its subject.
* ``KIND_RESPOND`` -- ``RESPOND_HEAD`` then the error type (UTF-8, empty on
  success) then the payload (the reply, or the handler's error message).
* ``KIND_REPLY`` -- ``REPLY_HEAD`` then the reply payload (an error answers
  the request with a ``Result`` instead).

Fixed layouts (all little-endian, no padding) keep the hot paths free of
per-message msgpack: the broker unpacks descriptor arrays with
``struct.iter_unpack`` and packs them with one ``struct.pack`` per batch, and
a KV write or a request costs one ``struct`` call per hop instead of a
msgpack map.
"""

from __future__ import annotations

import itertools
import struct
from typing import Final, Literal

from ._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ACK_DESC",
    "ACK_HEAD",
    "ACK_KIND_ACK",
    "ACK_KIND_NAK",
    "ACK_KIND_PROGRESS",
    "ACK_KIND_TERM",
    "COUNT",
    "DELIVER_FLAG_COUNTS",
    "DELIVER_HEAD",
    "FRAME_HEAD",
    "INCOMING_HEAD",
    "KIND_ACK",
    "KIND_CONTROL",
    "KIND_DELIVER",
    "KIND_INCOMING",
    "KIND_KV_WRITE",
    "KIND_KV_WRITTEN",
    "KIND_PUBACK",
    "KIND_PUBLISH",
    "KIND_REPLY",
    "KIND_REQUEST",
    "KIND_RESPOND",
    "KV_OPS",
    "KV_OP_CAS",
    "KV_OP_DELETE",
    "KV_OP_PUT",
    "KV_WRITE_HEAD",
    "KV_WRITTEN",
    "MAX_BATCH",
    "MIN_MAX_FRAME",
    "MSG_DESC",
    "OFFSET_MASK",
    "PUBACK",
    "PUBACK_FULL",
    "PUBACK_KEPT",
    "PUBACK_OK",
    "PUB_DESC",
    "PUB_FLAG_KEEP",
    "PUB_HEAD",
    "REPLY_HEAD",
    "REQUEST_HEAD",
    "RESPOND_HEAD",
    "SOURCE_SHIFT",
    "FrameKind",
    "encode_frame",
    "iter_descriptors",
    "pack_rows",
    "split_frames",
]

FRAME_HEAD: Final = struct.Struct("<IB")
"""body_len u32, kind u8."""

KIND_CONTROL: Final = 1
KIND_PUBLISH: Final = 2
KIND_PUBACK: Final = 3
KIND_DELIVER: Final = 4
KIND_ACK: Final = 5
KIND_KV_WRITE: Final = 6
KIND_KV_WRITTEN: Final = 7
KIND_REQUEST: Final = 8
KIND_INCOMING: Final = 9
KIND_RESPOND: Final = 10
KIND_REPLY: Final = 11
FrameKind = Literal[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
_KINDS: Final = frozenset(
    (
        KIND_CONTROL,
        KIND_PUBLISH,
        KIND_PUBACK,
        KIND_DELIVER,
        KIND_ACK,
        KIND_KV_WRITE,
        KIND_KV_WRITTEN,
        KIND_REQUEST,
        KIND_INCOMING,
        KIND_RESPOND,
        KIND_REPLY,
    )
)

MIN_MAX_FRAME: Final = 64 * 1024
"""No connection may set its frame limit below this."""

MAX_BATCH: Final = 4096
"""Most descriptors one publish, delivery or ack frame may carry."""

PUB_HEAD: Final = struct.Struct("<QQQIB")
"""batch_no u64, region_off u64, region_len u64, count u32, flags u8 (PUB_FLAG_*)."""
PUB_FLAG_KEEP: Final = 1
PUB_DESC: Final = struct.Struct("<IIIH")
"""rel_off u32, hdr_len u32, pay_len u32, subj_len u16."""

PUBACK: Final = struct.Struct("<QQIB")
"""batch_no u64, first_seq u64, count u32, status u8 (PUBACK_*)."""
PUBACK_OK: Final = 0
PUBACK_FULL: Final = 1
PUBACK_KEPT: Final = 2

SOURCE_SHIFT: Final = 40
"""A delivery's ``store_off`` above this bit names the client whose arena
holds the bytes (0: the store); client ids of kept batches are below 2**24."""
OFFSET_MASK: Final = (1 << SOURCE_SHIFT) - 1

DELIVER_HEAD: Final = struct.Struct("<IIQB")
"""sub_id u32, count u32, first_id u64 (the first delivery's id; the others
follow it one by one), flags u8 (DELIVER_FLAG_*)."""
DELIVER_FLAG_COUNTS: Final = 1
"""The frame carries a u32 delivery count per message (some are redeliveries)."""
COUNT: Final = struct.Struct("<I")
"""One delivery count (u32) of a frame with ``DELIVER_FLAG_COUNTS``."""
MSG_DESC: Final = struct.Struct("<QQIIH")
"""One delivered message: seq u64, store_off u64, hdr_len u32, pay_len u32,
subj_len u16. The broker packs it once per message and reuses it for every
delivery of that message."""

ACK_HEAD: Final = struct.Struct("<I")
"""count u32."""
ACK_DESC: Final = struct.Struct("<QIBI")
"""first_delivery_id u64, n u32, kind u8 (ACK_KIND_*), delay_ms u32."""
ACK_KIND_ACK: Final = 0
ACK_KIND_NAK: Final = 1
ACK_KIND_TERM: Final = 2
ACK_KIND_PROGRESS: Final = 3
ACK_KINDS: Final = frozenset((ACK_KIND_ACK, ACK_KIND_NAK, ACK_KIND_TERM, ACK_KIND_PROGRESS))

KV_WRITE_HEAD: Final = struct.Struct("<QBBHHQ")
"""call_id u64, op u8 (KV_OP_*), has_expected u8 (0/1; cas only), bucket_len
u16, key_len u16, expected u64 (the revision a cas expects; 0 unless
has_expected)."""
KV_OP_PUT: Final = 0
KV_OP_CAS: Final = 1
KV_OP_DELETE: Final = 2
KV_OPS: Final = frozenset((KV_OP_PUT, KV_OP_CAS, KV_OP_DELETE))
KV_WRITTEN: Final = struct.Struct("<QQ")
"""call_id u64, revision u64 (0: a delete of an absent key, which takes none)."""

REQUEST_HEAD: Final = struct.Struct("<QdH")
"""call_id u64, timeout f64 (seconds), subject_len u16."""
INCOMING_HEAD: Final = struct.Struct("<QIH")
"""req_id u64, svc_id u32, subject_len u16."""
RESPOND_HEAD: Final = struct.Struct("<QH")
"""req_id u64, error_type_len u16."""
REPLY_HEAD: Final = struct.Struct("<Q")
"""call_id u64."""


def encode_frame(kind: int, body: bytes | bytearray | memoryview, max_frame: int) -> bytes:
    """One frame as bytes. Raises ``LocalProtocolError`` when ``body`` is over
    ``max_frame`` or ``kind`` is unknown: we never send what the peer must refuse."""
    if kind not in _KINDS:
        raise LocalProtocolError(f"unknown frame kind {kind}")
    if len(body) > max_frame:
        raise LocalProtocolError(f"frame body of {len(body)} bytes is over the limit {max_frame}")
    return FRAME_HEAD.pack(len(body), kind) + bytes(body)


def split_frames(buf: bytearray, max_frame: int) -> list[tuple[int, bytes]]:
    """Remove every complete frame from the front of ``buf`` and return them as
    ``(kind, body)``; an incomplete tail stays in ``buf``.

    Raises ``RemoteProtocolError`` for an unknown kind or a declared length
    over ``max_frame`` -- as soon as the header is seen, before the body
    arrives, once the complete frames before it have been returned.
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    end = len(buf)
    head = FRAME_HEAD.size
    while end - pos >= head:
        body_len, kind = FRAME_HEAD.unpack_from(buf, pos)
        if kind not in _KINDS or body_len > max_frame:
            del buf[:pos]
            if out:  # hand out the good frames first; the next call raises
                return out
            if kind not in _KINDS:
                raise RemoteProtocolError(f"unknown frame kind {kind}")
            raise RemoteProtocolError(
                f"frame of {body_len} bytes is over the limit of {max_frame} bytes"
            )
        if end - pos - head < body_len:
            break
        start = pos + head
        out.append((kind, bytes(buf[start : start + body_len])))
        pos = start + body_len
    if pos:
        del buf[:pos]
    return out


_ROWS: dict[tuple[str, int], struct.Struct] = {}


def pack_rows(desc: struct.Struct, rows: list[tuple[int, ...]]) -> bytes:
    """``rows`` packed as ``desc`` each, back to back, in one ``pack`` call."""
    key = (desc.format, len(rows))
    many = _ROWS.get(key)
    if many is None:
        if len(_ROWS) > 4096:
            _ROWS.clear()
        many = _ROWS[key] = struct.Struct("<" + desc.format.lstrip("<") * len(rows))
    return many.pack(*itertools.chain.from_iterable(rows))


def iter_descriptors(
    body: bytes, head: struct.Struct, desc: struct.Struct, count_index: int, what: str
) -> tuple[tuple[int, ...], list[tuple[int, ...]], bytes]:
    """Split a batch body into (head fields, descriptor tuples, trailing blob).

    Checks the count against ``MAX_BATCH`` and that the descriptors fit the
    body; raises ``RemoteProtocolError`` naming ``what`` otherwise.
    """
    if len(body) < head.size:
        raise RemoteProtocolError(f"truncated {what} frame: {len(body)} bytes")
    fields = head.unpack_from(body, 0)
    count = fields[count_index]
    if count > MAX_BATCH:
        raise RemoteProtocolError(f"{what} frame carries {count} entries, limit {MAX_BATCH}")
    desc_end = head.size + count * desc.size
    if len(body) < desc_end:
        raise RemoteProtocolError(f"truncated {what} frame: {count} entries do not fit")
    descs = list(desc.iter_unpack(memoryview(body)[head.size : desc_end]))
    return fields, descs, body[desc_end:]
