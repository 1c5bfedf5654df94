"""Replaying journal records of kept batches, and of version 4 (before them)."""

from __future__ import annotations

from klieo_shm.daemon import _journal as J
from klieo_shm.daemon._recovery import replay
from klieo_shm.protocol._frames import PUB_DESC

DESCS = PUB_DESC.pack(16, 0, 48, 3)
ROUTE_OF = bytes(2)  # one message, route 0


def _publish(*arena: str) -> list[object]:
    return [J.PUBLISH, 1, DESCS, b"x.y", [["d"]], ROUTE_OF, 128, 64, -1, *arena]


def test_a_version_4_publish_names_the_store() -> None:
    r = replay([[J.DURABLE, "d", "x.>", 30.0], _publish()])
    assert r.batches[1] == (128, 64, -1, DESCS, b"x.y", None)
    assert r.durables["d"].live == {1: 0}


def test_a_kept_publish_names_its_arena_until_moved() -> None:
    r = replay([[J.DURABLE, "d", "x.>", 30.0], _publish("/klieo-1-9.ab-a3")])
    assert r.batches[1] == (128, 64, -1, DESCS, b"x.y", "/klieo-1-9.ab-a3")
    r = replay([[J.DURABLE, "d", "x.>", 30.0], _publish("/klieo-1-9.ab-a3"), [J.MOVED, 1, 4096, 7]])
    assert r.batches[1] == (4096, 64, 7, DESCS, b"x.y", None)
    assert r.durables["d"].live == {1: 0}
