"""``klieo-shm``: the operator's command line.

Only ``version`` works yet; the other commands (status, pub, sub, req, kv,
jobs, bench) arrive with the broker and say so until then.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["main"]

_PLANNED = ("status", "pub", "sub", "req", "kv", "jobs", "worker", "bench")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="klieo-shm", description=__doc__)
    parser.add_argument("command", choices=("version", *_PLANNED))
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    if ns.command == "version":
        print(f"klieo-shm {__version__}")
        return 0
    print(f"klieo-shm {ns.command}: not yet implemented", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
