"""``klieo-shm``: the operator's command line.

Working now: ``version``, ``worker`` (run a worker pool over a queue) and
``bench`` (runs ``tools/bench`` from a source checkout). ``status``, ``pub``,
``sub``, ``req``, ``kv`` and ``jobs`` arrive with the broker and say so until
then. Every command takes ``--url`` (default ``$KLIEO_BUS_URL``, else the
default socket). Errors print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys
from collections.abc import Sequence

from . import __version__
from ._errors import BusError

__all__ = ["main"]

_PLANNED = ("status", "pub", "sub", "req", "kv", "jobs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klieo-shm", description="klieo_shm operator CLI")
    parser.add_argument("--url", default=None, help="bus URL (default: $KLIEO_BUS_URL or shm://)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    w = sub.add_parser("worker", help="run a worker pool: klieo-shm worker mod:func --queue Q")
    w.add_argument("handler", help="the job handler as 'package.module:function'")
    w.add_argument("--queue", "-q", required=True)
    w.add_argument("-n", "--processes", type=int, default=os.cpu_count() or 1)
    w.add_argument("--lease-ttl", type=float, default=30.0)
    w.add_argument("--until-empty", action="store_true", help="exit once the queue is drained")
    b = sub.add_parser("bench", help="run tools/bench (from a source checkout)")
    b.add_argument("args", nargs=argparse.REMAINDER)
    for name in _PLANNED:
        p = sub.add_parser(name, help="(not yet: arrives with the broker)")
        p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _worker(ns: argparse.Namespace) -> int:
    from .worker import WorkerOptions, run_pool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run_pool(
        ns.handler,
        ns.queue,
        processes=ns.processes,
        url=ns.url,
        options=WorkerOptions(lease_ttl=ns.lease_ttl, until_empty=ns.until_empty),
    )
    return 0 if all(code == 0 for code in result.exit_codes) else 1


def _bench(ns: argparse.Namespace) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(os.path.join(root, "tools", "bench")):
        print("klieo-shm bench: tools/bench is in the source checkout only", file=sys.stderr)
        return 2
    sys.path.insert(0, root)
    sys.argv = ["tools.bench", *ns.args]
    if ns.url:
        sys.argv += ["--klieo-url", ns.url]
    runpy.run_module("tools.bench", run_name="__main__", alter_sys=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    ns = _parser().parse_args(argv)
    try:
        if ns.command == "version":
            print(f"klieo-shm {__version__}")
            return 0
        if ns.command == "worker":
            return _worker(ns)
        if ns.command == "bench":
            return _bench(ns)
    except (BusError, ValueError, ImportError) as exc:
        print(f"klieo-shm {ns.command}: {exc}", file=sys.stderr)
        return 1
    print(f"klieo-shm {ns.command}: not yet implemented (arrives with the broker)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
