"""The ``shm://`` backend: a client of the ``klieo-shmd`` broker.

``shm://`` uses the default socket path; ``shm:///run/user/1000/klieo/klieo.sock``
names one. The query parameter ``reconnect_timeout`` (seconds, e.g.
``shm:///run/klieo.sock?reconnect_timeout=5``) bounds how long the client
keeps reconnecting after the broker went away (default
``$KLIEO_RECONNECT_TIMEOUT``, else 30; ``0`` gives up at once); ``spin_us``
is read by the blocking flavour (``klieo_shm.sync``); ``direct=0`` keeps
requests and services of this bus off direct links (see ``_requests``);
other query parameters and the fragment are ignored (tests use them to
label buses).
An asyncio client spins while it awaits an answer when its loop is a
``klieo_shm.SpinningEventLoop``.

A broker restart on the same socket is ridden through: the client reconnects
by itself, streams re-subscribe, services re-register, watches resume, claims
and leases keep their tokens; operations in flight at the loss raise
:class:`ConnectionInterrupted` (a ``Closed``), later ones wait for the new
connection (see ``_client``).
Payloads go through shared memory: published payloads are written into this
client's tx arena, delivered ones are copied out of the broker's read-only
store (three copies in all). Request/reply payloads travel inline in control
frames, on a direct link between requester and server where there is one
(see ``_direct``); job payloads travel inline too (see ``_jobs``), and KV
values on their way to the broker.
KV reads take no round trip: ``get`` reads the broker's KV table through a
read-only mapping (see ``_kv``).
"""

from __future__ import annotations

import asyncio
import math
from urllib.parse import parse_qs, unquote, urlsplit

from .._bus import Bus, default_socket_path
from .._errors import BusError, InvalidArgument
from ._client import ENV_RECONNECT_TIMEOUT, RECONNECT_TIMEOUT, ConnectionInterrupted, ShmClient
from ._jobs import ShmJobQueue
from ._kv import ShmKvStore
from ._pubsub import ShmPubsub
from ._requests import ShmRequestReply

__all__ = [
    "ENV_RECONNECT_TIMEOUT",
    "RECONNECT_TIMEOUT",
    "ConnectionInterrupted",
    "ShmClient",
    "ShmPubsub",
    "ShmRequestReply",
    "direct_of",
    "open_bus",
    "reconnect_timeout_of",
    "socket_path_of",
]


def socket_path_of(url: str) -> str:
    """The socket path a ``shm://`` URL names (the default when empty)."""
    parts = urlsplit(url)
    path = unquote(parts.netloc + parts.path)
    return path or default_socket_path()


def reconnect_timeout_of(url: str) -> float | None:
    """The URL's ``reconnect_timeout`` query parameter (``None`` if absent)."""
    values = parse_qs(urlsplit(url).query).get("reconnect_timeout")
    if not values:
        return None
    raw = values[-1]
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidArgument("reconnect_timeout", raw, "must be seconds (a number)") from None
    if not (seconds >= 0.0 and math.isfinite(seconds)):
        raise InvalidArgument("reconnect_timeout", raw, "must be finite and >= 0")
    return seconds


def direct_of(url: str) -> bool:
    """Whether the URL lets requests and services use direct links: yes
    unless its ``direct`` query parameter is ``0`` (``1``: yes)."""
    values = parse_qs(urlsplit(url).query).get("direct")
    if not values:
        return True
    if values[-1] not in ("0", "1"):
        raise InvalidArgument("direct", values[-1], "must be 0 or 1")
    return values[-1] == "1"


async def open_bus(url: str) -> Bus:
    """Connect to the broker at the URL's socket; ``Closed`` naming the
    socket when no broker answers there."""
    client = ShmClient(socket_path_of(url), reconnect_timeout=reconnect_timeout_of(url))
    pubsub = ShmPubsub(client)
    requests = ShmRequestReply(client, direct_of(url))
    jobs = ShmJobQueue(client)
    kv = ShmKvStore(client)

    def lost(exc: Exception) -> None:  # gave up reconnecting
        error = exc if isinstance(exc, BusError) else BusError(str(exc))
        pubsub.end_all(error)
        requests.end_all()
        kv.end_all(error)

    async def restore() -> None:  # on a new connection, before anything else uses it
        await jobs.restore()  # resolutions queued meanwhile go first
        await asyncio.gather(pubsub.restore(), requests.restore(), kv.restore())

    client.on_lost = lost
    client.on_interrupted = pubsub.interrupted
    client.on_restore = restore
    await client.ensure()

    async def close() -> None:
        pubsub.end_all(None)
        requests.end_all()
        kv.end_all(None)
        if client.connected:
            jobs.release_all()
        await client.close()

    return Bus(url, pubsub, requests, kv, jobs, close)
