"""Smoke tests of the benchmark tool (``python -m tools.bench``).

They run the tool in a subprocess with ``--quick --json`` and check that it ran and
produced figures; they never assert a speed. The tool's temporary files go to this
test's own short directory under /tmp (through ``TMPDIR``; pytest's ``tmp_path``
is too long for a Unix socket path), which lets the test check that no server
or role process outlived the run and that the tool removed its temporary tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 240.0


def _leftovers(session: int, marker: str) -> list[psutil.Process]:
    """Processes of the tool's session, or whose command line names its temp tree."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if os.getsid(proc.pid) == session or marker in cmdline:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return [p for p in found if p.pid != os.getpid()]


def _reap_leftovers(session: int, marker: str) -> list[int]:
    end = time.monotonic() + 5.0
    while (left := _leftovers(session, marker)) and time.monotonic() < end:
        time.sleep(0.1)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return [p.pid for p in left]


def run_bench(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run the tool; return (exit code, parsed JSON, stderr)."""
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.bench", "--quick", "--json", "--no-progress", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: killable as a whole
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the tool stops its servers on SIGTERM
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"bench did not finish in {RUN_TIMEOUT:.0f}s: {err.decode()[-2000:]}")
    finally:
        left = _reap_leftovers(proc.pid, str(tmp_path))
        assert not left, f"bench left processes running: {left}"
    assert not list(tmp_path.glob("klieo-bench-*")), "bench left its temporary directory"
    stderr = err.decode(errors="replace")
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON on stdout (exit {proc.returncode}): {stderr[-2000:]}")
    return proc.returncode, data, stderr


def _check_figures(row: dict[str, Any]) -> None:
    figure = row["figure"]
    assert figure is not None, row
    assert figure["median"] > 0, row
    assert figure["min"] <= figure["median"] <= figure["max"], row
    assert len(figure["rounds"]) == 1, row  # --quick: one round
    if row["kind"] == "latency":
        assert row["p99"]["median"] >= figure["median"] > 0, row


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A private directory with a short path (sockets live under it)."""
    path = Path(tempfile.mkdtemp(prefix="kb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_quick_run_of_a_serverless_peer(short_tmp: Path) -> None:
    code, data, stderr = run_bench(short_tmp, "--peers", "mpqueue")
    assert code == 0, stderr[-2000:]
    assert data["schema"] == "klieo-shm-bench/1"
    assert data["quick"] is True
    rows = {row["workload"]: row for row in data["rows"] if row["status"] != "n/a"}
    assert set(rows) == {"W1", "W2", "W5", "W6"}
    for row in rows.values():
        assert row["peer"] == "mp-queue"
        assert row["label"] == "fire-and-forget"
        assert row["status"] == "ok", row
        _check_figures(row)
        assert row["vs_klieo"] is None  # klieo was not selected
    assert rows["W2"]["unit"] == "MiB/s"
    not_applicable = {r["workload"] for r in data["rows"] if r["status"] == "n/a"}
    assert not_applicable == {"W3", "W4"}


def test_quick_run_of_klieo(short_tmp: Path) -> None:
    code, data, stderr = run_bench(short_tmp, "--peers", "klieo")
    rows = [row for row in data["rows"] if row["family"] == "klieo"]
    assert rows, data
    bad = [f"{r['workload']} {r['op']} {r['peer']}: {r['status']} {r['reason']}" for r in rows
           if r["status"] not in ("ok", "n/a")]  # fmt: skip
    assert not bad, bad
    ok = [row for row in rows if row["status"] == "ok"]
    assert {row["workload"] for row in ok} == {"W1", "W2", "W3", "W4", "W5", "W6"}
    assert code == 0, stderr[-2000:]
    for row in ok:
        assert row["label"] == "durable"
        _check_figures(row)
