"""Command line: ``python -m tools.bench [--quick] [--json] [--only W1,W3] [--peers ...]``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from tools.bench.progress import Progress
from tools.bench.report import format_table, to_json
from tools.bench.suite import Options, run_suite
from tools.bench.workloads import all_peers, select_peers
from tools.bench.workloads.base import WORKLOADS

FULL_TIMEOUT = 90.0
QUICK_TIMEOUT = 30.0
FULL_BUDGET = 540.0
QUICK_BUDGET = 240.0


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="Benchmark klieo_shm against NATS JetStream, Redis, multiprocessing, "
        "faster-fifo and pyzmq. Starts nats-server and redis-server itself on free loopback "
        "ports; peers whose server or library is missing are reported as skipped.",
    )
    p.add_argument("--quick", action="store_true", help="one round with small counts (smoke run)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("--only", type=_csv, metavar="W1,W3", help="run only these workloads")
    p.add_argument("--peers", type=_csv, metavar="klieo,redis,...",
                   help="peer families (klieo, klieo-nojournal, nats, redis, mpqueue, mppipe, "
                   "fasterfifo, zmq) or exact peer names (see --list)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up round")
    p.add_argument("--timeout", type=float, metavar="S",
                   help=f"per-run timeout in seconds (default {FULL_TIMEOUT:.0f}, "
                   f"{QUICK_TIMEOUT:.0f} with --quick)")  # fmt: skip
    p.add_argument("--row-budget", type=float, default=60.0, metavar="S",
                   help="start no further round of a row once it would take longer than this "
                   "(default 60; at least one round always runs)")  # fmt: skip
    p.add_argument("--budget", type=float, metavar="S",
                   help=f"time budget of the whole run: later rows are skipped (default "
                   f"{FULL_BUDGET:.0f}, {QUICK_BUDGET:.0f} with --quick)")  # fmt: skip
    p.add_argument("--klieo-url", metavar="URL",
                   help="use this klieo_shm bus URL instead of starting klieo-shmd for the "
                   "klieo peers (klieo-nojournal still starts klieo-shmd --no-state)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.add_argument("--list", action="store_true", help="list workloads and peers, then exit")
    return p


def _list() -> str:
    lines = ["workloads:"]
    for w in WORKLOADS.values():
        lines.append(f"  {w.key} {w.name:<14} {w.full_count:>6,} x {w.size} B  {w.description}")
    lines.append("peers (family / name / label: what):")
    for peer in all_peers():
        runs = ",".join(sorted(peer.impls))
        lines.append(f"  {peer.family:<15} {peer.name:<15} {peer.label:<15} [{runs}] {peer.what}")
    return "\n".join(lines)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(_list())
        return 0
    workloads = [w.upper() for w in (args.only or list(WORKLOADS))]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    try:
        peers = select_peers(args.peers)
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    opts = Options(
        workloads=tuple(k for k in WORKLOADS if k in workloads),
        peers=tuple(peers),
        quick=args.quick,
        rounds=args.rounds,
        warmup=not args.no_warmup,
        timeout=args.timeout or (QUICK_TIMEOUT if args.quick else FULL_TIMEOUT),
        row_budget=args.row_budget,
        budget=args.budget or (QUICK_BUDGET if args.quick else FULL_BUDGET),
        klieo_url=args.klieo_url,
    )
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = run_suite(opts, Progress(enabled=not args.no_progress))
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped, temporary files removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(to_json(result), indent=2, ensure_ascii=False))
    else:
        print(format_table(result))
    return 1 if any(r.status == "failed" for r in result.rows) else 0
