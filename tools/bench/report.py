"""Render a :class:`~tools.bench.suite.SuiteResult` as a text table or as JSON."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tools.bench import JSON_SCHEMA_ID
from tools.bench.stats import Summary
from tools.bench.suite import JournalCost, Row, SuiteResult
from tools.bench.workloads.base import WORKLOADS

LEGEND = (
    "durable = the bus keeps a message/job until it is acked (Redis runs without persistence, "
    "so not on disk); fire-and-forget = gone once received.\n"
    "klieo x = klieo/peer for throughput, peer/klieo for latency (best klieo row of the "
    "workload): > 1 means klieo_shm is better."
)
JOURNAL_LEGEND = (
    "klieo-nojournal = the klieo peer against klieo-shmd --no-state; klieo runs the daemon "
    "with its defaults (journal on); its klieo x is against the klieo row.\n"
    "journal cost = klieo/klieo-nojournal medians of this run (latency: the inverse); "
    "< 1 is what the journal costs."
)


def _json_unit(unit: str) -> str:
    return unit.replace("µs", "us")


def row_json(row: Row) -> dict[str, Any]:
    return {
        "workload": row.workload.key,
        "workload_name": row.workload.name,
        "op": row.op,
        "peer": row.peer.name,
        "family": row.peer.family,
        "label": row.peer.label,
        "status": row.status,
        "reason": row.reason,
        "kind": row.workload.kind,
        "stat": "p50" if row.workload.kind == "latency" else "rate",
        "unit": _json_unit(row.workload.unit),
        "higher_is_better": row.higher_is_better,
        "count": row.count,
        "size": row.workload.size,
        "figure": row.figure.as_json() if row.figure else None,
        "p99": row.p99.as_json() if row.p99 else None,
        "vs_klieo": row.vs_klieo,
        "vs_klieo_peer": row.vs_klieo_peer,
        "note": row.note,
    }


def to_json(result: SuiteResult) -> dict[str, Any]:
    opts = result.options
    peers_seen = {r.peer.name: r.peer for r in result.rows}
    return {
        "schema": JSON_SCHEMA_ID,
        "started": dt.datetime.fromtimestamp(result.started, dt.UTC).isoformat(),
        "wall_s": round(result.wall_s, 3),
        "quick": opts.quick,
        "rounds": 1 if opts.quick else opts.rounds,
        "warmup": opts.warmup and not opts.quick,
        "timeout_s": opts.timeout,
        "row_budget_s": opts.row_budget,
        "budget_s": opts.budget,
        "host": result.host,
        "servers": result.servers,
        "peers": [
            {
                "name": p.name,
                "family": p.family,
                "label": p.label,
                "what": p.what,
                "status": "skipped" if result.peer_status.get(p.name) else "ok",
                "reason": result.peer_status.get(p.name),
            }
            for p in peers_seen.values()
        ],
        "workloads": [
            {
                "key": w.key,
                "name": w.name,
                "kind": w.kind,
                "unit": _json_unit(w.unit),
                "size": w.size,
                "count": w.quick_count if opts.quick else w.full_count,
                "description": w.description,
            }
            for w in (WORKLOADS[k] for k in opts.workloads)
        ],
        "rows": [row_json(r) for r in result.rows],
        "journal_cost": [journal_cost_json(c) for c in result.journal_cost],
    }


def journal_cost_json(cost: JournalCost) -> dict[str, Any]:
    return {
        "workload": cost.workload.key,
        "op": cost.op,
        "unit": _json_unit(cost.workload.unit),
        "journal_peer": cost.journal.peer.name,
        "nojournal_peer": cost.nojournal.peer.name,
        "journal_median": cost.journal.figure.median if cost.journal.figure else None,
        "nojournal_median": cost.nojournal.figure.median if cost.nojournal.figure else None,
        "ratio": cost.ratio,
        "round_ratios": list(cost.round_ratios),
        "bar": cost.bar,
        "met": cost.met,
    }


# ------------------------------------------------------------------------------- table


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _figure(row: Row) -> str:
    if row.status == "skipped":
        return _clip(f"skipped: {row.reason}")
    if row.status == "failed":
        return _clip(f"FAILED: {row.reason}")
    assert row.figure is not None
    if row.workload.kind == "latency":
        return f"p50 {_num(row.figure.median)} µs"
    return f"{_num(row.figure.median)} {row.workload.unit}"


def _spread(s: Summary | None) -> str:
    if s is None:
        return ""
    if len(s.values) == 1:
        return "(1 round)"
    return f"{_num(s.min)}-{_num(s.max)}"


def _clip(text: str, width: int = 44) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _ratio(row: Row, klieo_rows: set[tuple[str, str]]) -> str:
    if row.peer.family == "klieo":
        return "—"
    if row.vs_klieo is None or (row.workload.key, row.op) not in klieo_rows:
        return "n/a"
    return f"{row.vs_klieo:.2f}x"


def format_table(result: SuiteResult) -> str:
    opts = result.options
    rows = [r for r in result.rows if r.status != "n/a"]
    klieo_ok = {
        (r.workload.key, r.op) for r in rows if r.peer.family == "klieo" and r.status == "ok"
    }
    header = ("workload", "peer", "label", "figure (median)", "spread min-max", "p99", "klieo x")
    table = [header]
    for r in rows:
        p99 = f"{_num(r.p99.median)} µs" if r.p99 else ""
        table.append(
            (r.title, r.peer.name, r.peer.label, _figure(r), _spread(r.figure), p99,
             _ratio(r, klieo_ok))
        )  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    rounds = "1 quick round" if opts.quick else f"{opts.rounds} rounds"
    warm = " after a warm-up" if opts.warmup and not opts.quick else ""
    lines.append(
        f"klieo_shm bench: {rounds}{warm}; wall time {result.wall_s:.1f} s; "
        f"{result.host.get('cpus')} CPUs, Python {result.host.get('python')}"
    )
    for name, srv in result.servers.items():
        state = f"skipped: {srv['reason']}" if srv["status"] == "skipped" else srv["version"]
        lines.append(f"  {name}: {state}" + (f" at {srv['url']}" if srv.get("url") else ""))
    lines.append("")
    for i, line in enumerate(table):
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if j < 4 else c.rjust(w) for j, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if result.journal_cost:
        lines.append("")
        lines.extend(journal_cost_lines(result.journal_cost))
    notes = _notes(result)
    if notes:
        lines.append("")
        lines.extend(notes)
    lines.append("")
    lines.append(LEGEND)
    if result.journal_cost:
        lines.append(JOURNAL_LEGEND)
    return "\n".join(lines)


def _median(row: Row) -> str:
    if row.figure is None:
        return row.status
    if row.workload.kind == "latency":
        return f"p50 {_num(row.figure.median)} µs"
    return f"{_num(row.figure.median)} {row.workload.unit}"


def journal_cost_lines(costs: list[JournalCost]) -> list[str]:
    """One line per workload: klieo (journal on) as a share of klieo-nojournal."""
    out = []
    for c in costs:
        what = f"{c.workload.key}" + (f" {c.op}" if c.op else "")
        figures = f"{c.journal.peer.name} {_median(c.journal)} vs {c.nojournal.peer.name} " + (
            _median(c.nojournal)
        )
        if c.ratio is None:
            out.append(f"journal cost: {what} n/a ({figures})")
            continue
        rounds = ""
        if len(c.round_ratios) > 1:
            rounds = f", rounds {min(c.round_ratios):.2f}-{max(c.round_ratios):.2f}x"
        bar = ""
        if c.bar is not None:
            bar = f"bar >= {c.bar:.2f}x: {'met' if c.met else 'NOT met'}; "
        out.append(f"journal cost: {what} {c.ratio:.2f}x of no-journal ({bar}{figures}{rounds})")
    return out


def _notes(result: SuiteResult) -> list[str]:
    out: list[str] = []
    skipped = {n: why for n, why in result.peer_status.items() if why}
    for name, why in skipped.items():
        out.append(f"skipped {name}: {why}")
    seen: set[tuple[str, str | None]] = set()
    noted: set[tuple[str, str, str]] = set()
    failed_servers = {s for r in result.rows if r.status == "failed" for s in r.peer.servers}
    for name in sorted(failed_servers):
        tail = result.servers.get(name, {}).get("log_tail")
        if tail:
            out.append(f"{name} server log (tail): {tail}")
    for r in result.rows:
        if r.status == "failed":
            out.append(f"failed {r.title} / {r.peer.name}: {r.reason}")
        elif r.note and (r.workload.key, r.peer.name, r.note) not in noted:
            noted.add((r.workload.key, r.peer.name, r.note))
            out.append(f"note {r.workload.key} / {r.peer.name}: {r.note}")
        elif r.status == "skipped" and r.peer.name not in skipped:
            key = (f"{r.workload.key} / {r.peer.name}", r.reason)
            if key not in seen:
                seen.add(key)
                out.append(f"skipped {key[0]}: {r.reason}")
    return out
