"""Replaying journal records of kept batches, and of version 4 (before them);
job claims as columns (version 6) and as a list per claim (versions 4 and 5)."""

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


def _claimed(claim: list[object]) -> dict[str, object]:
    added = [J.JOB_ADD, "q", ["a", "b", "c"], [b"1", b"2", b"3"], []]
    r = replay([added, claim])
    return {job_id: (job[3], job[4]) for job_id, job in r.queues["q"].jobs.items()}


def test_claims_as_columns_and_as_lists_replay_alike() -> None:
    by_list = [J.JOB_CLAIM, "q", 7, 1.5, 30.0, [["a", 4, 1], ["b", 5, 2]]]
    one_count = [J.JOB_CLAIM, "q", 7, 1.5, 30.0, ["a", "b"], 4, 1]
    counts = [J.JOB_CLAIM, "q", 7, 1.5, 30.0, ["a", "b"], 4, [1, 2]]

    assert (
        _claimed(by_list)
        == _claimed(counts)
        == {
            "a": (1, (7, 1.5, 30.0, 4)),
            "b": (2, (7, 1.5, 30.0, 5)),
            "c": (0, None),
        }
    )
    assert _claimed(one_count)["b"] == (1, (7, 1.5, 30.0, 5))
