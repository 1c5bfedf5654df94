"""Turn role outputs into per-round figures, and rounds into medians with spread."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tools.bench.workloads.base import MIB, RoleResult, Workload


class MeasureError(Exception):
    """Role outputs do not add up to a valid measurement."""


@dataclass(frozen=True)
class Summary:
    """Median and spread of one figure over the measured rounds."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    values: tuple[float, ...]

    def as_json(self) -> dict[str, float | list[float]]:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "q1": self.q1,
            "q3": self.q3,
            "rounds": list(self.values),
        }


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values")
    vals = tuple(float(v) for v in values)
    if len(vals) == 1:
        q1 = q3 = vals[0]
    else:
        q1, _q2, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    return Summary(statistics.median(vals), min(vals), max(vals), q1, q3, vals)


def round_figures(
    workload: Workload, outputs: Sequence[RoleResult], count: int
) -> dict[str, float]:
    """Figures of one round.

    Throughput workloads give ``{"value": per second}`` (``MiB/s`` for the large-payload
    workload) from the earliest producer ``t0`` to the latest consumer ``t1``. Latency
    workloads give ``{"<op>.p50": µs, "<op>.p99": µs}`` for each of the workload's ops.
    """
    if workload.kind == "latency":
        merged: dict[str, float] = {}
        for out in outputs:
            merged.update({k: v for k, v in out.items() if k.endswith((".p50", ".p99"))})
        missing = [op for op in workload.ops if f"{op}.p50" not in merged]
        if missing:
            raise MeasureError(f"no latency samples for {', '.join(missing)}")
        return merged
    starts = [o["t0"] for o in outputs if "t0" in o]
    ends = [o["t1"] for o in outputs if "t1" in o]
    delivered = sum(int(o.get("n", 0)) for o in outputs)
    if not starts or not ends:
        raise MeasureError("a producer or consumer reported no timestamp")
    expected = count * workload.fanout
    if delivered < expected:
        raise MeasureError(f"only {delivered} of {expected} messages were delivered")
    elapsed = max(ends) - min(starts)
    if elapsed <= 0:
        raise MeasureError(f"non-positive elapsed time {elapsed:.6f}s")
    if workload.unit == "MiB/s":
        return {"value": delivered * workload.size / MIB / elapsed}
    return {"value": delivered / elapsed}


def ratio(klieo: float, peer: float, higher_is_better: bool) -> float | None:
    """klieo/peer for throughput, peer/klieo for latency: > 1 always means klieo is better."""
    if klieo <= 0 or peer <= 0:
        return None
    return klieo / peer if higher_is_better else peer / klieo
