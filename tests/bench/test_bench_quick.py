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

from klieo_shm.daemon._config import default_state_dir, on_memory_fs

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
    spinning = {(row["peer"], row["workload"]) for row in ok if "spin" in row["peer"]}
    assert spinning == {("klieo-spin", "W3"), ("klieo-spin", "W4"), ("klieo-spin-sync", "W4")}
    assert "--spin-us" in data["servers"]["klieo-spin"]["version"]
    assert code == 0, stderr[-2000:]
    for row in ok:
        assert row["label"] == "durable"
        _check_figures(row)


def test_quick_run_of_klieo_without_journal(short_tmp: Path) -> None:
    """klieo (daemon defaults: journal beside the socket) and klieo-nojournal
    (``--no-state``) in one run, with the journal's cost computed from both."""
    code, data, stderr = run_bench(short_tmp, "--peers", "klieo,klieo-nojournal", "--only", "W1,W5")
    assert code == 0, stderr[-2000:]
    rows = {(r["workload"], r["peer"]): r for r in data["rows"] if r["status"] != "n/a"}
    assert set(rows) == {
        ("W1", "klieo"), ("W1", "klieo-nojournal"), ("W1", "klieo-permsg"),
        ("W5", "klieo"), ("W5", "klieo-sync"), ("W5", "klieo-perjob"),
        ("W5", "klieo-nojournal"),
    }  # fmt: skip
    for row in rows.values():
        assert row["status"] == "ok", row
        _check_figures(row)
    for key in ("W1", "W5"):
        nojournal = rows[(key, "klieo-nojournal")]
        assert nojournal["family"] == "klieo-nojournal"
        assert nojournal["label"] == "durable"
        assert nojournal["vs_klieo"] > 0
        assert nojournal["vs_klieo_peer"] == "klieo"
    servers = data["servers"]
    assert servers["klieo"]["status"] == servers["klieo-nojournal"]["status"] == "ok"
    assert servers["klieo"]["url"] != servers["klieo-nojournal"]["url"]
    state_dir = Path(servers["klieo"]["state_dir"])  # the daemon's default, on a tmpfs
    sock = servers["klieo"]["url"].removeprefix("shm://")
    assert str(state_dir) == default_state_dir(sock)
    assert on_memory_fs(str(state_dir))
    assert not state_dir.exists()  # removed with the server
    assert f"journal in {state_dir}" in servers["klieo"]["version"]
    assert servers["klieo-nojournal"]["state_dir"] is None
    assert "--no-state" in servers["klieo-nojournal"]["version"]
    costs = {c["workload"]: c for c in data["journal_cost"]}
    assert set(costs) == {"W1", "W5"}
    for key, cost in costs.items():
        assert (cost["journal_peer"], cost["nojournal_peer"]) == ("klieo", "klieo-nojournal")
        assert cost["bar"] == 0.8
        expected = cost["journal_median"] / cost["nojournal_median"]
        assert cost["ratio"] == pytest.approx(expected), cost
        assert cost["ratio"] == pytest.approx(rows[(key, "klieo-nojournal")]["vs_klieo"])
        assert cost["met"] == (cost["ratio"] >= 0.8)


def test_peer_selection_keeps_the_journal_variant_apart() -> None:
    from tools.bench.workloads import select_peers

    assert "klieo-nojournal" not in {p.name for p in select_peers(["klieo"])}
    both = select_peers(["klieo", "klieo-nojournal"])
    assert [p.name for p in both] == [
        "klieo",
        "klieo-sync",
        "klieo-spin",
        "klieo-spin-sync",
        "klieo-perjob",
        "klieo-permsg",
        "klieo-nojournal",
    ]
    (nojournal,) = select_peers(["klieo-nojournal"])
    assert nojournal.servers == ("klieo-nojournal",)
    assert {"W1", "W5"} <= set(nojournal.impls)
    assert all(
        role.options["server"] == "klieo-nojournal"
        for impl in nojournal.impls.values()
        for role in impl.roles
    )


def test_the_spinning_peers_spin_on_their_own_daemon() -> None:
    from tools.bench.workloads import select_peers

    spin, spin_sync = select_peers(["klieo-spin", "klieo-spin-sync"])
    for peer in (spin, spin_sync):
        assert peer.servers == ("klieo-spin",)
        roles = [role for impl in peer.impls.values() for role in impl.roles]
        assert all(role.options["server"] == "klieo-spin" for role in roles)
    assert all(r.options["loop"] == "spin" for i in spin.impls.values() for r in i.roles)
    assert spin_sync.impls["W4"].roles[0].options["spin_us"] > 0


def test_journal_cost_lines() -> None:
    from tools.bench.report import journal_cost_lines
    from tools.bench.stats import summarize
    from tools.bench.suite import Row, journal_costs
    from tools.bench.workloads import select_peers
    from tools.bench.workloads.base import WORKLOADS

    peers = {p.name: p for p in select_peers(["klieo", "klieo-nojournal"])}
    klieo, nojournal = peers["klieo"], peers["klieo-nojournal"]
    w1, w3 = WORKLOADS["W1"], WORKLOADS["W3"]
    rows = [
        Row(w1, klieo, "", "ok", 1, figure=summarize([90.0, 80.0, 100.0])),
        Row(w1, nojournal, "", "ok", 1, figure=summarize([100.0, 100.0, 100.0])),
        Row(w3, klieo, "rtt", "ok", 1, figure=summarize([250.0])),  # latency: lower is better
        Row(w3, nojournal, "rtt", "ok", 1, figure=summarize([200.0])),
    ]
    w1_cost, w3_cost = journal_costs(rows)
    assert w1_cost.ratio == pytest.approx(0.9)
    assert w1_cost.met is True
    assert w1_cost.round_ratios == pytest.approx((0.9, 0.8, 1.0))
    assert w3_cost.ratio == pytest.approx(0.8)
    assert w3_cost.bar is None
    assert w3_cost.met is None
    line1, line3 = journal_cost_lines([w1_cost, w3_cost])
    assert line1.startswith("journal cost: W1 0.90x of no-journal (bar >= 0.80x: met;")
    assert "rounds 0.80-1.00x" in line1
    assert line3.startswith("journal cost: W3 rtt 0.80x of no-journal (klieo p50 250 µs")


@pytest.mark.parametrize(("part", "workload"), [("pubsub", "W1"), ("jobs", "W5")])
def test_quick_run_against_a_bound_daemon(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, part: str, workload: str
) -> None:
    """``tools.bench.bounds`` still serves the workload it bounds (it patches
    private broker methods: a change there must show here), and
    ``$KLIEO_SHMD`` runs the klieo peers against it."""
    monkeypatch.setenv("KLIEO_SHMD", f"{sys.executable} -m tools.bench.bounds {part}")
    code, data, stderr = run_bench(short_tmp, "--only", workload, "--peers", "klieo-nojournal")
    assert code == 0, stderr[-2000:]
    assert "tools.bench.bounds" in data["servers"]["klieo-nojournal"]["version"]
    rows = [row for row in data["rows"] if row["peer"] == "klieo-nojournal"]
    assert rows, data
    for row in rows:
        assert row["status"] == "ok", row
        _check_figures(row)
