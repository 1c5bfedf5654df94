"""``klieo-shmd``: the shared-memory broker.

Runs in the foreground with sane defaults (``klieo-shmd`` alone is enough),
logs to stderr, and shuts down cleanly on SIGTERM or SIGINT leaving nothing
in ``/dev/shm``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections.abc import Callable
from typing import Final

from .._spin import SpinningEventLoop
from ._config import (
    DEFAULT_ARENA_SIZE,
    DEFAULT_KEEP_MIN,
    DEFAULT_KV_MAX_SIZE,
    DEFAULT_KV_SIZE,
    DEFAULT_MAX_ACK_PENDING,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MEMBER_WINDOW,
    DEFAULT_MEMBER_WINDOW_BYTES,
    DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_STORE_SIZE,
    BrokerConfig,
)
from ._server import serve_forever

__all__ = ["GC_THRESHOLDS", "main", "parse_size"]

GC_THRESHOLDS: Final = (50_000, 20, 20)
"""The broker's ``gc.set_threshold``. It makes a few tuples per message, so
Python's default (700, 10, 10) runs a young collection every few hundred
messages; with these, 1 publisher and 1 subscriber moved 219-223k msgs/s
against 193-202k (3 alternating runs of 1.5M messages each). Reference
cycles are rare here (a session and its members, freed at disconnect), so
they only wait a little longer."""


def parse_size(text: str) -> int:
    """``"64M"``, ``"1G"``, ``"4096"`` -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="klieo-shmd", description=__doc__.splitlines()[0])
    p.add_argument("--socket", default="", help="socket path (default: per-user runtime dir)")
    p.add_argument(
        "--store-size",
        type=parse_size,
        default=DEFAULT_STORE_SIZE,
        help="payload storage, the broker's memory limit (default 256M)",
    )
    p.add_argument(
        "--arena-size",
        type=parse_size,
        default=DEFAULT_ARENA_SIZE,
        help="each client's tx arena (default 64M)",
    )
    p.add_argument(
        "--keep-min",
        type=parse_size,
        default=DEFAULT_KEEP_MIN,
        help="publish batches this big or bigger are delivered from the publisher's "
        "arena, not copied into the store (default 128K; 0: copy all)",
    )
    p.add_argument(
        "--max-payload",
        type=parse_size,
        default=DEFAULT_MAX_PAYLOAD,
        help="largest payload (default 16M)",
    )
    p.add_argument(
        "--max-ack-pending",
        type=int,
        default=DEFAULT_MAX_ACK_PENDING,
        help="unacked deliveries per durable (default 1000)",
    )
    p.add_argument(
        "--member-window",
        type=int,
        default=DEFAULT_MEMBER_WINDOW,
        help=f"unacked deliveries per member of a durable (default {DEFAULT_MEMBER_WINDOW})",
    )
    p.add_argument(
        "--member-window-bytes",
        type=parse_size,
        default=DEFAULT_MEMBER_WINDOW_BYTES,
        help="bytes of unacked deliveries per member of a durable; one always goes (default 4M)",
    )
    p.add_argument(
        "--publish-timeout",
        type=float,
        default=DEFAULT_PUBLISH_TIMEOUT,
        help="seconds a publish waits for storage before Full (default 5)",
    )
    p.add_argument(
        "--group",
        default=None,
        help="let this group's members connect (widens socket dir and segments)",
    )
    p.add_argument(
        "--kv-size",
        type=parse_size,
        default=DEFAULT_KV_SIZE,
        help="the KV table's first segment; it grows when full (default 16M)",
    )
    p.add_argument(
        "--kv-max-size",
        type=parse_size,
        default=DEFAULT_KV_MAX_SIZE,
        help="largest KV table segment; past it KV writes raise Full (default 1G)",
    )
    p.add_argument(
        "--state-dir",
        default="",
        help="directory of the journal (default: on a tmpfs: beside the socket as "
        "NAME.state when its directory is one, else /dev/shm/klieo-state.UID.HASH)",
    )
    p.add_argument(
        "--no-state",
        action="store_true",
        help="keep no journal: a restarted broker starts empty",
    )
    p.add_argument(
        "--fsync",
        choices=("always", "interval", "never"),
        default="interval",
        help="when journal writes are synced to disk (default: interval)",
    )
    p.add_argument(
        "--fsync-interval",
        type=float,
        default=1.0,
        help="seconds between syncs under --fsync interval (default 1)",
    )
    p.add_argument(
        "--spin-us",
        type=float,
        default=0.0,
        help="microseconds to poll before sleeping after each wake-up: lower "
        "round-trip latency for a busy core (default 0: sleep at once)",
    )
    p.add_argument("--foreground", action="store_true", help="accepted; always foreground")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _loop_factory(config: BrokerConfig) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A spinning loop under ``--spin-us``; else asyncio's default."""
    if config.spin_us:
        return lambda: SpinningEventLoop(config.spin_us, always=True)
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s klieo-shmd %(levelname)s %(message)s",
    )
    try:
        config = BrokerConfig(
            socket_path=args.socket,
            store_size=args.store_size,
            arena_size=args.arena_size,
            keep_min=args.keep_min,
            max_payload=args.max_payload,
            max_ack_pending=args.max_ack_pending,
            member_window=args.member_window,
            member_window_bytes=args.member_window_bytes,
            publish_timeout=args.publish_timeout,
            group=args.group,
            kv_size=args.kv_size,
            kv_max_size=args.kv_max_size,
            state_dir=None if args.no_state else args.state_dir,
            fsync=args.fsync,
            fsync_interval=args.fsync_interval,
            spin_us=args.spin_us,
        )
        gc.set_threshold(*GC_THRESHOLDS)
        with asyncio.Runner(loop_factory=_loop_factory(config)) as runner:
            runner.run(serve_forever(config, args.ready_fd))
    except (ValueError, RuntimeError, OSError) as exc:
        logging.getLogger("klieo.shmd").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
