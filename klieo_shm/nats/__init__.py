"""The ``nats://HOST:PORT`` backend: klieo_shm's interfaces over NATS JetStream.

Needs the optional extra ``nats`` (``pip install 'klieo-shm[nats]'``, which
brings nats-py). Importing this module works without it; :func:`open_bus`
then raises ``ImportError`` saying what to install.

URL options (query string): ``prefix`` (default ``klieo``: every stream,
bucket and subject of the bus lives under it), ``max_payload`` (bytes;
default the server's limit less 4 KiB for headers), ``job_ack_wait``
(seconds, default 1), ``storage`` (``file`` or ``memory``),
``connect_timeout`` (seconds). How klieo maps onto NATS is described in
``_names`` and in each part's module (``_pubsub``, ``_requests``, ``_kv``,
``_leases``, ``_jobs``).
"""

from __future__ import annotations

from .._bus import Bus

__all__ = ["open_bus"]


async def open_bus(url: str) -> Bus:
    """Connect to the NATS server named by ``url``; see the module docstring."""
    try:
        from ._connection import open_bus as _open
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "nats":
            raise
        raise ImportError(
            "the nats:// backend needs nats-py: pip install 'klieo-shm[nats]'", name="nats"
        ) from exc
    return await _open(url)
