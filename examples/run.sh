#!/usr/bin/env bash
# The README's first quick-start command: set up .venv, then run the example
# agent pool on a klieo-shmd it starts on a private socket and stops at the end.
# Usage: bash examples/run.sh [--tasks N] [--workers N]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/python examples/agent_pool.py --with-broker "$@"
