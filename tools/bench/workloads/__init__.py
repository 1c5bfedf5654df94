"""Registry of peers. Third-party libraries are imported inside the role functions,
so a missing library only skips its peer (see ``Peer.requires``)."""

from __future__ import annotations

from tools.bench.workloads import (
    fifo_peer,
    klieo_peer,
    mp_peers,
    nats_peer,
    redis_peer,
    zmq_peer,
)
from tools.bench.workloads.base import Impl, Peer

KLIEO_FAMILY = klieo_peer.FAMILY
NOJOURNAL = klieo_peer.NOJOURNAL  # klieo_shm without journal: peer, family and server
# servers whose peers use the klieo_shm API
KLIEO_SERVERS = (klieo_peer.SERVER, NOJOURNAL, klieo_peer.SPIN)


def all_peers() -> list[Peer]:
    """Every peer, klieo_shm first (the order of the report)."""
    return [
        *klieo_peer.PEERS,
        *nats_peer.PEERS,
        *redis_peer.PEERS,
        *mp_peers.PEERS,
        *fifo_peer.PEERS,
        *zmq_peer.PEERS,
    ]


def select_peers(names: list[str] | None) -> list[Peer]:
    """Peers matching family names (``nats``) or exact peer names (``nats-js-sync``)."""
    peers = all_peers()
    if not names:
        return peers
    known = {p.family for p in peers} | {p.name for p in peers}
    aliases = {"faster-fifo": "fasterfifo", "mp-queue": "mpqueue", "mp-pipe": "mppipe"}
    wanted = {aliases.get(n, n) for n in names}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [p for p in peers if p.family in wanted or p.name in wanted]


def klieo_probe(server: str = klieo_peer.SERVER) -> Impl:
    return klieo_peer.probe_impl(server)


__all__ = [
    "KLIEO_FAMILY",
    "KLIEO_SERVERS",
    "NOJOURNAL",
    "all_peers",
    "klieo_probe",
    "select_peers",
]
