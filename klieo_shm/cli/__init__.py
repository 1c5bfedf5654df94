"""``klieo-shm``: the operator's command line.

``status`` (broker, clients, consumers, queues, dead letters, KV buckets,
memory), ``pub``, ``sub``, ``durable rm``, ``req``, ``kv get|put|del|keys|watch``,
``jobs enqueue|ls|dlq|requeue|purge``, ``worker`` (run a worker pool) and
``bench`` (runs ``tools/bench`` from a source checkout). ``--url`` (default
``$KLIEO_BUS_URL``, else the default socket) and ``--json`` go before the
command. An error prints one line and exits 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import runpy
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from .. import __version__
from .._bus import connect, resolve_url
from .._errors import BusError, Closed
from ._commands import COMMANDS
from ._status import enrich, render

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="klieo-shm", description="klieo_shm operator CLI")
    p.add_argument("--url", default=None, help="bus URL (default: $KLIEO_BUS_URL, else shm://)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    sub.add_parser("status", help="what the broker is doing (shm:// only)")
    c = sub.add_parser("pub", help="publish a message")
    c.add_argument("subject")
    c.add_argument("data", help="payload text, or - for stdin")
    c.add_argument("-H", "--header", action="append", help="header as key=value")
    c = sub.add_parser("sub", help="consume from a durable and ack")
    c.add_argument("subject")
    c.add_argument("--durable", "-d", required=True)
    c.add_argument("--count", "-n", type=int, default=None)
    c.add_argument("--timeout", type=float, default=None, help="stop after this idle time")
    c.add_argument("--no-ack", action="store_true", help="leave messages unacknowledged")
    d = sub.add_parser("durable", help="durable consumers")
    d.add_subparsers(dest="durable_op", required=True).add_parser(
        "rm", help="delete a durable and its pending messages"
    ).add_argument("name")
    c = sub.add_parser("req", help="send a request, print the reply")
    c.add_argument("subject")
    c.add_argument("data")
    c.add_argument("--timeout", type=float, default=5.0)
    kv = sub.add_parser("kv", help="key/value store").add_subparsers(dest="kv_op", required=True)
    for name in ("get", "put", "del"):
        c = kv.add_parser(name)
        c.add_argument("bucket")
        c.add_argument("key")
        if name == "put":
            c.add_argument("value", help="value text, or - for stdin")
    kv.add_parser("keys").add_argument("bucket")
    c = kv.add_parser("watch")
    c.add_argument("bucket")
    c.add_argument("pattern", nargs="?", default=">")
    c.add_argument("--count", "-n", type=int, default=None)
    c.add_argument("--timeout", type=float, default=None, help="stop after this idle time")
    jobs = sub.add_parser("jobs", help="job queues").add_subparsers(dest="jobs_op", required=True)
    c = jobs.add_parser("enqueue")
    c.add_argument("queue")
    c.add_argument("data")
    c.add_argument("--dedup-key", default=None)
    c.add_argument("--max-attempts", type=int, default=None)
    jobs.add_parser("ls", help="counts by state").add_argument("queue")
    jobs.add_parser("dlq", help="list dead letters").add_argument("queue")
    c = jobs.add_parser("requeue", help="move dead letters back to the queue")
    c.add_argument("queue")
    c.add_argument("ids", nargs="+")
    jobs.add_parser("purge", help="discard every dead letter of a queue").add_argument("queue")
    w = sub.add_parser("worker", help="run a worker pool: klieo-shm worker mod:func --queue Q")
    w.add_argument("handler", help="the job handler as 'package.module:function'")
    w.add_argument("--queue", "-q", required=True)
    w.add_argument("-n", "--processes", type=int, default=os.cpu_count() or 1)
    w.add_argument("--lease-ttl", type=float, default=30.0)
    w.add_argument("--until-empty", action="store_true", help="exit once the queue is drained")
    b = sub.add_parser("bench", help="run tools/bench (from a source checkout)")
    b.add_argument("args", nargs=argparse.REMAINDER)
    return p


async def _status(ns: argparse.Namespace, url: str) -> int:
    from ..shm import ShmClient, socket_path_of

    if urlsplit(url).scheme != "shm":
        print(f"klieo-shm status: needs an shm:// broker, not {url}", file=sys.stderr)
        return 1
    client = ShmClient(socket_path_of(url), name="klieo-shm status")
    try:
        await client.ensure()
        stats = enrich(await client.call("stats", {}))
    finally:
        await client.close()
    print(json.dumps(stats, sort_keys=True) if ns.json else render(stats, client.socket_path))
    return 0


async def _run(ns: argparse.Namespace) -> int:
    url = resolve_url(ns.url)
    if ns.command == "status":
        return await _status(ns, url)
    async with await connect(url) as bus:
        return await COMMANDS[ns.command](ns, bus)


def _worker(ns: argparse.Namespace) -> int:
    from ..worker import WorkerOptions, run_pool

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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isdir(os.path.join(root, "tools", "bench")):
        print("klieo-shm bench: tools/bench is in the source checkout only", file=sys.stderr)
        return 2
    sys.path.insert(0, root)
    sys.argv = ["tools.bench", *ns.args]
    if ns.url:
        sys.argv += ["--klieo-url", ns.url]
    runpy.run_module("tools.bench", run_name="__main__", alter_sys=True)
    return 0


def _explain(exc: BaseException, url: str | None) -> str:
    if isinstance(exc, Closed) and urlsplit(resolve_url(url)).scheme == "shm":
        from ..shm import socket_path_of

        sock = socket_path_of(resolve_url(url))
        return f"{exc} (start a broker with: klieo-shmd --socket {sock})"
    return str(exc)


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
        return asyncio.run(_run(ns))
    except (BusError, ValueError, ImportError, OSError) as exc:
        print(f"klieo-shm {ns.command}: {_explain(exc, ns.url)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
