"""The README's first command runs examples/agent_pool.py with its own broker:
it must reach its summary with every task done and leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent_pool.py"


@pytest.mark.parametrize("backend", ["--with-broker", "--url=memory://example"])
def test_agent_pool_example_runs_every_task_to_its_summary(backend: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KLIEO_BUS_URL"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--tasks", "40", "--workers", "2", backend],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "summary: 40/40 tasks done" in done.stdout
    assert "0 dead letters" in done.stdout
    assert "4 retries" in done.stdout  # tasks 7, 17, 27, 37 fail once on purpose
