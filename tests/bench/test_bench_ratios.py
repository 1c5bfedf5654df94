"""The ``klieo x`` column: peers against the best klieo row, and
``klieo-nojournal`` against the ``klieo`` row (the same roles, journal on)."""

from __future__ import annotations

from tools.bench.stats import summarize
from tools.bench.suite import Row, _add_ratios
from tools.bench.workloads.base import WORKLOADS, Peer


def _row(name: str, family: str, figure: float) -> Row:
    peer = Peer(name=name, family=family, label="durable", what="", impls={})
    return Row(WORKLOADS["W1"], peer, "", "ok", 1, figure=summarize([figure]))


def test_peers_compare_with_the_best_klieo_row_and_nojournal_with_klieo() -> None:
    klieo = _row("klieo", "klieo", 200.0)
    permsg = _row("klieo-permsg", "klieo", 250.0)  # the best of the family here
    nojournal = _row("klieo-nojournal", "klieo-nojournal", 220.0)
    redis = _row("redis-streams", "redis", 100.0)

    _add_ratios([klieo, permsg, nojournal, redis])

    assert (redis.vs_klieo_peer, redis.vs_klieo) == ("klieo-permsg", 2.5)
    assert nojournal.vs_klieo_peer == "klieo"
    assert nojournal.vs_klieo == 200.0 / 220.0
    assert klieo.vs_klieo is None  # the family's own rows get no ratio
