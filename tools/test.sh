#!/usr/bin/env bash
# The project's test command (the README's second quick-start command; .ci/run
# calls it). On a fresh machine it creates .venv, installs the package with its
# test extra, then runs ruff, mypy --strict and the suite under pytest -n 2.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy klieo_shm
echo "== pytest -n 2"
.venv/bin/pytest -n 2 "$@"
