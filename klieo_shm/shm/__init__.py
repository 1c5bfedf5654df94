"""The ``shm://`` backend: a client of the ``klieo-shmd`` broker.

``shm://`` uses the default socket path; ``shm:///run/user/1000/klieo/klieo.sock``
names one. Query and fragment are ignored (tests use them to label buses).
Payloads go through shared memory: published payloads are written into this
client's tx arena, delivered ones are copied out of the broker's read-only
store (three copies in all). Request/reply payloads travel inline in control
frames, as
job payloads do (see ``_jobs``), and KV values on their way to the broker.
KV reads take no round trip: ``get`` reads the broker's KV table through a
read-only mapping (see ``_kv``).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .._bus import Bus, default_socket_path
from .._errors import Closed
from ._client import ShmClient
from ._jobs import ShmJobQueue
from ._kv import ShmKvStore
from ._pubsub import ShmPubsub, ShmRequestReply

__all__ = ["ShmClient", "ShmPubsub", "ShmRequestReply", "open_bus", "socket_path_of"]


def socket_path_of(url: str) -> str:
    """The socket path a ``shm://`` URL names (the default when empty)."""
    parts = urlsplit(url)
    path = unquote(parts.netloc + parts.path)
    return path or default_socket_path()


async def open_bus(url: str) -> Bus:
    """Connect to the broker at the URL's socket; ``Closed`` naming the
    socket when no broker answers there."""
    client = ShmClient(socket_path_of(url))
    pubsub = ShmPubsub(client)
    requests = ShmRequestReply(client)
    jobs = ShmJobQueue(client)
    kv = ShmKvStore(client)

    def lost(exc: Exception) -> None:
        pubsub.end_all(Closed(client.socket_path, "klieo-shmd went away"))
        requests.end_all()
        kv.end_all(Closed(client.socket_path, "klieo-shmd went away"))

    client.on_lost = lost
    await client.ensure()

    async def close() -> None:
        pubsub.end_all(None)
        requests.end_all()
        kv.end_all(None)
        if client.connected:
            jobs.release_all()
        await client.close()

    return Bus(url, pubsub, requests, kv, jobs, close)
