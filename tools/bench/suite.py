"""Plan and run a benchmark: servers, warm-up, rounds, rows, klieo ratios and the
journal's cost (``klieo`` vs ``klieo-nojournal`` of the same run)."""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import platform
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any, Literal

from tools.bench.progress import Progress
from tools.bench.runner import RunFailed, describe, run_roles
from tools.bench.servers import ServerPool
from tools.bench.stats import MeasureError, Summary, ratio, round_figures, summarize
from tools.bench.workloads import KLIEO_FAMILY, KLIEO_SERVERS, NOJOURNAL, klieo_probe
from tools.bench.workloads.base import WORKLOADS, Impl, Peer, RunParams, Workload

Status = Literal["ok", "skipped", "failed", "n/a"]

JOURNAL_BAR = 0.8  # the issue: with its journal, klieo keeps >= 80% of the no-journal figure
JOURNAL_BAR_WORKLOADS = ("W1", "W5")  # ... on these workloads; the others are informative
JOURNAL_PEER = "klieo"  # the same roles as klieo-nojournal, against the default daemon


@dataclass(frozen=True)
class Options:
    workloads: tuple[str, ...]
    peers: tuple[Peer, ...]
    quick: bool = False
    rounds: int = 3
    warmup: bool = True
    timeout: float = 90.0  # one run (one round of one row)
    row_budget: float = 60.0  # no further round starts once a row would exceed this
    budget: float = 540.0  # the whole suite: rows that would start later are skipped
    klieo_url: str | None = None


@dataclass
class Row:
    workload: Workload
    peer: Peer
    op: str
    status: Status
    count: int
    reason: str | None = None
    figure: Summary | None = None  # throughput, or p50 for latency ops
    p99: Summary | None = None
    vs_klieo: float | None = None
    vs_klieo_peer: str | None = None
    note: str | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.workload.kind == "throughput"

    @property
    def title(self) -> str:
        return f"{self.workload.key} {self.workload.name}" + (f" {self.op}" if self.op else "")


@dataclass(frozen=True)
class JournalCost:
    """``klieo`` (daemon defaults, journal on) against ``klieo-nojournal`` in one run.

    ``ratio`` compares the medians over the rounds: journal/no-journal for throughput,
    no-journal/journal for latency, so < 1 means the journal costs that much.
    ``round_ratios`` pairs round i of both rows (they run back to back in each pass).
    """

    workload: Workload
    op: str
    journal: Row
    nojournal: Row
    ratio: float | None
    round_ratios: tuple[float, ...]
    bar: float | None = None  # the lowest acceptable ratio, for the workloads that have one

    @property
    def met(self) -> bool | None:
        return None if self.ratio is None or self.bar is None else self.ratio >= self.bar


@dataclass
class SuiteResult:
    options: Options
    rows: list[Row]
    servers: dict[str, dict[str, str | int | None]]
    peer_status: dict[str, str | None]  # peer name -> skip reason (None when available)
    started: float
    wall_s: float
    host: dict[str, Any] = field(default_factory=dict)
    journal_cost: list[JournalCost] = field(default_factory=list)


def _count(workload: Workload, opts: Options, warmup: bool) -> int:
    """Full counts for measured rounds; the warm-up round (servers' files, caches,
    lazily created client state) and ``--quick`` use the small counts."""
    if opts.quick or warmup:
        return workload.quick_count
    return workload.full_count


class _RowRunner:
    def __init__(
        self,
        opts: Options,
        ctx: SpawnContext,
        urls: dict[str, str],
        tmp: Path,
        pool: ServerPool,
        peers: Sequence[Peer],
    ) -> None:
        self.opts = opts
        self.ctx = ctx
        self.urls = urls
        self.tmp = tmp
        self.pool = pool
        self.peers = peers
        self.avail = {p.name: _peer_availability(p, pool) for p in peers}
        self._seq = 0
        self._start = time.monotonic()

    def ensure_servers(self, peer: Peer) -> list[str]:
        """Restart the peer's servers that died during earlier rows; notes saying so."""
        notes = [n for s in peer.servers if (n := self.pool.ensure(s))]
        if notes:
            self.urls = {n: s.url for n, s in self.pool.servers.items() if s.url}
            self.avail.update({p.name: _peer_availability(p, self.pool) for p in self.peers})
        return notes

    def budget_left(self) -> float:
        return self.opts.budget - (time.monotonic() - self._start)

    def params(self, workload: Workload, count: int) -> RunParams:
        self._seq += 1
        return RunParams(
            workload=workload.key,
            count=count,
            size=workload.size,
            run_id=f"r{self._seq:03d}{secrets.token_hex(3)}",
            urls=dict(self.urls),
            tmpdir=str(self.tmp),
            deadline=time.monotonic() + min(self.opts.timeout, max(15.0, self.budget_left())),
        )

    def one_round(self, impl: Impl, workload: Workload, count: int) -> dict[str, float]:
        params = self.params(workload, count)
        try:
            if impl.setup is not None:
                impl.setup(params)
            outputs = run_roles(impl, params, self.ctx)
            return round_figures(workload, outputs, count)
        except RunFailed:
            raise
        except MeasureError as exc:
            raise RunFailed(str(exc)) from None
        except Exception as exc:
            raise RunFailed(describe(exc)) from None
        finally:
            if impl.teardown is not None:
                with contextlib.suppress(Exception):
                    impl.teardown(params)


def _peer_availability(peer: Peer, pool: ServerPool) -> str | None:
    for module in peer.requires:
        try:
            found = importlib.util.find_spec(module) is not None
        except Exception:
            found = False
        if not found:
            return f"python module {module!r} is not installed"
    for name in peer.servers:
        srv = pool.servers.get(name)
        if srv is None or srv.skipped:
            why = srv.skipped if srv else "not started"
            return f"{name}: {why}"
    return None


@dataclass
class _Cell:
    """The measurements of one (workload, peer) pair while the suite runs."""

    workload: Workload
    peer: Peer
    impl: Impl
    figures: list[dict[str, float]] = field(default_factory=list)
    status: Status = "ok"
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    spent: float = 0.0  # seconds, warm-up included
    last: float = 0.0  # seconds the last measured round took

    def rows(self, count: int) -> list[Row]:
        w, note = self.workload, "; ".join(self.notes) or None
        if self.status != "ok" or not self.figures:
            status: Status = self.status if self.status != "ok" else "skipped"
            return [Row(w, self.peer, op, status, count, self.reason, note=note) for op in w.ops]
        if w.kind == "throughput":
            summary = summarize([f["value"] for f in self.figures])
            return [Row(w, self.peer, "", "ok", count, figure=summary, note=note)]
        return [
            Row(w, self.peer, op, "ok", count, note=note,
                figure=summarize([f[f"{op}.p50"] for f in self.figures]),
                p99=summarize([f[f"{op}.p99"] for f in self.figures]))
            for op in w.ops
        ]  # fmt: skip


def run_suite(opts: Options, progress: Progress) -> SuiteResult:
    """Run every selected (workload, peer) pair.

    Rounds run pass by pass: a warm-up and round 1 of every pair, then round 2 of
    every pair, and so on. When time is short (``budget`` for the suite, ``row_budget``
    per pair) later rounds are dropped evenly across the rows; every row that can run
    gets at least one measured round.
    """
    started = time.time()
    t_start = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    workloads = [WORKLOADS[k] for k in opts.workloads]
    peers = [p for p in opts.peers if any(w.key in p.impls for w in workloads)]
    needed = sorted({s for p in peers for s in p.servers})
    root = Path(tempfile.mkdtemp(prefix="klieo-bench-"))
    rows: list[Row] = []
    try:
        with ServerPool(root) as pool:
            for name in needed:
                progress.status(f"starting {name} server")
                pool.start(name, opts.klieo_url if name == "klieo" else None)
            urls = {n: s.url for n, s in pool.servers.items() if s.url and not s.skipped}
            runner = _RowRunner(opts, ctx, urls, root, pool, peers)
            avail = runner.avail
            _probe_klieo(peers, avail, runner, progress)
            cells: dict[tuple[str, str], _Cell] = {}
            for w in workloads:
                for p in peers:
                    if (impl := p.impls.get(w.key)) is not None:
                        cells[(w.key, p.name)] = _Cell(w, p, impl)
            rounds = 1 if opts.quick else max(1, opts.rounds)
            for index in range(rounds):
                for cell in cells.values():
                    _run_round(cell, index, rounds, runner, progress)
            for w in workloads:
                for p in peers:
                    if (cell_ := cells.get((w.key, p.name))) is not None:
                        rows.extend(cell_.rows(_count(w, opts, warmup=False)))
                    elif reason := p.not_applicable.get(w.key):  # n/a rows only with a reason
                        rows.extend(Row(w, p, op, "n/a", 0, reason) for op in w.ops)
            servers = {n: s.as_json() for n, s in pool.servers.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
        progress.done()
    _add_ratios(rows)
    return SuiteResult(
        journal_cost=journal_costs(rows),
        options=opts,
        rows=rows,
        servers=servers,
        peer_status=avail,
        started=started,
        wall_s=time.monotonic() - t_start,
        host={
            "cpus": multiprocessing.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    )


def _run_round(
    cell: _Cell, index: int, rounds: int, runner: _RowRunner, progress: Progress
) -> None:
    """Round ``index`` of one cell (round 0 preceded by the warm-up), if time allows."""
    opts, w, peer = runner.opts, cell.workload, cell.peer
    if cell.status != "ok":
        return
    if index == 0:
        if why := runner.avail[peer.name]:
            cell.status, cell.reason = "skipped", why
            return
        if runner.budget_left() <= 0:
            cell.status = "skipped"
            cell.reason = f"the suite's time budget ({opts.budget:.0f} s) ran out"
            return
    elif cell.spent + cell.last > opts.row_budget or runner.budget_left() < cell.last:
        if not any(n.startswith("rounds:") for n in cell.notes):
            cell.notes.append(f"rounds: {index} of {rounds} (time budget)")
        return
    cell.notes.extend(runner.ensure_servers(peer))
    plan = [(f"round {index + 1}/{rounds}", _count(w, opts, warmup=False))]
    if index == 0 and opts.warmup and not opts.quick:
        plan.insert(0, ("warm-up", _count(w, opts, warmup=True)))
    for what, n in plan:
        progress.status(f"{w.key} {w.name}: {peer.name} {what} ({n:,} ops)")
        t = time.monotonic()
        try:
            fig = runner.one_round(cell.impl, w, n)
        except RunFailed as exc:
            cell.status = "skipped" if exc.unsupported else "failed"
            cell.reason = str(exc) if exc.unsupported else f"{what}: {exc}"
            return
        finally:
            cell.spent += time.monotonic() - t
            progress.note_done()
        if what != "warm-up":
            cell.figures.append(fig)
            cell.last = time.monotonic() - t


def _probe_klieo(
    peers: Sequence[Peer], avail: dict[str, str | None], runner: _RowRunner, progress: Progress
) -> None:
    """One connect/close per klieo-shmd before any klieo row, so a broken client
    gives one clear reason."""
    for server in KLIEO_SERVERS:
        klieo = [p for p in peers if server in p.servers and avail[p.name] is None]
        if not klieo:
            continue
        progress.status(f"probing klieo_shm connect() to the {server} server")
        params = runner.params(WORKLOADS["W1"], 1)
        try:
            run_roles(klieo_probe(server), params, runner.ctx)
        except RunFailed as exc:
            for p in klieo:
                avail[p.name] = f"connect failed: {exc}"


def _add_ratios(rows: list[Row]) -> None:
    """Compare every peer row with the best klieo row of the same workload and
    op; ``klieo-nojournal`` with the ``klieo`` row (the same roles, journal
    on), as its journal cost line does."""
    best: dict[tuple[str, str], Row] = {}
    same_roles: dict[tuple[str, str], Row] = {}
    for row in rows:
        if row.peer.family != KLIEO_FAMILY or row.status != "ok" or row.figure is None:
            continue
        key = (row.workload.key, row.op)
        if row.peer.name == JOURNAL_PEER:
            same_roles[key] = row
        cur = best.get(key)
        if cur is None or cur.figure is None or _better(row, cur):
            best[key] = row
    for row in rows:
        if row.peer.family == KLIEO_FAMILY or row.figure is None:
            continue
        key = (row.workload.key, row.op)
        ref = same_roles.get(key) if row.peer.name == NOJOURNAL else best.get(key)
        if ref is not None and ref.figure is not None:
            row.vs_klieo = ratio(ref.figure.median, row.figure.median, row.higher_is_better)
            row.vs_klieo_peer = ref.peer.name


def _better(a: Row, b: Row) -> bool:
    assert a.figure is not None
    assert b.figure is not None
    if a.higher_is_better:
        return a.figure.median > b.figure.median
    return a.figure.median < b.figure.median


def journal_costs(rows: Sequence[Row]) -> list[JournalCost]:
    """The journal's cost for every workload and op with a ``klieo-nojournal`` row."""
    by_key = {(r.workload.key, r.op, r.peer.name): r for r in rows}
    out = []
    for nojournal in rows:
        if nojournal.peer.name != NOJOURNAL or nojournal.status == "n/a":
            continue
        journal = by_key.get((nojournal.workload.key, nojournal.op, JOURNAL_PEER))
        if journal is None:
            continue
        value: float | None = None
        pairs: tuple[float, ...] = ()
        if journal.figure is not None and nojournal.figure is not None:
            best = journal.higher_is_better
            value = ratio(journal.figure.median, nojournal.figure.median, best)
            zipped = zip(journal.figure.values, nojournal.figure.values, strict=False)
            pairs = tuple(r for a, b in zipped if (r := ratio(a, b, best)) is not None)
        bar = JOURNAL_BAR if nojournal.workload.key in JOURNAL_BAR_WORKLOADS else None
        w, op = nojournal.workload, nojournal.op
        out.append(JournalCost(w, op, journal, nojournal, value, pairs, bar))
    return out
