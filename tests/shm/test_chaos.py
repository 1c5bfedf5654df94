"""Chaos, the NATS way: publishers, subscribers, a producer and workers run
while klieo-shmd is killed with SIGKILL and restarted on its state directory
several times. Every payload carries (sender, sequence number); per sender a
count per number checks that nothing a client was told succeeded is lost,
and counts the duplicates at-least-once allows (a publish or enqueue retried
after a crash, a delivery or job whose ack the crash swallowed).

The short run is part of the test command; ``--chaos-long`` runs the long one
(more restarts and traffic) and prints its figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from array import array
from typing import Any

import pytest

import klieo_shm
from klieo_shm.daemon import DaemonProcess

ROLES = os.path.join(os.path.dirname(__file__), "chaos_roles.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(klieo_shm.__file__)))
WAIT = float(os.environ.get("KLIEO_CHAOS_WAIT", "120"))
"""Generous bound on the silence between two reports of the roles."""


class Tally:
    """Counts per (sender, number) of what senders were told succeeded and
    of what receivers got."""

    def __init__(self, senders: int, count: int) -> None:
        self.count = count
        self.sent = [array("H", bytes(2 * count)) for _ in range(senders)]
        self.got = [array("H", bytes(2 * count)) for _ in range(senders)]
        self.received = 0

    def add_sent(self, who: int, ns: list[int]) -> None:
        sent = self.sent[who]
        for n in ns:
            sent[n] += 1

    def add_got(self, who: int, ns: list[int]) -> None:
        got = self.got[who]
        for n in ns:
            got[n] += 1
        self.received += len(ns)

    def lost(self) -> int:
        return sum(
            1
            for sent, got in zip(self.sent, self.got, strict=True)
            for s, g in zip(sent, got, strict=True)
            if s and not g
        )

    def missing(self, limit: int = 10) -> list[tuple[int, int]]:
        """Some (sender, number) pairs sent but never received."""
        found = []
        for who, (sent, got) in enumerate(zip(self.sent, self.got, strict=True)):
            for n, (s, g) in enumerate(zip(sent, got, strict=True)):
                if s and not g:
                    found.append((who, n))
                    if len(found) >= limit:
                        return found
        return found

    def duplicates(self) -> int:
        return sum(g - 1 for got in self.got for g in got if g > 1)

    def complete(self) -> bool:
        return self.lost() == 0


class Roles:
    """The role processes and their merged report lines."""

    def __init__(self, sock: str) -> None:
        self.sock = sock
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sel = selectors.DefaultSelector()
        self.buffers: dict[int, bytes] = {}
        self.lines: list[Any] = []

    def start(self, role: str, who: int, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.Popen(
            [sys.executable, ROLES, role, self.sock, str(who), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        self.buffers[proc.stdout.fileno()] = b""
        self.sel.register(proc.stdout, selectors.EVENT_READ)

    def next(self, timeout: float) -> Any:
        """The next report line of any role; ``None`` after ``timeout`` of silence."""
        while not self.lines:
            ready = self.sel.select(timeout)
            if not ready:
                return None
            for key, _ in ready:
                fd = key.fd
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self.sel.unregister(key.fileobj)
                    continue
                data = self.buffers[fd] + chunk
                *whole, self.buffers[fd] = data.split(b"\n")
                self.lines += [json.loads(line) for line in whole if line]
        return self.lines.pop(0)

    def stop(self) -> list[int | None]:
        for proc in self.procs:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.write(b"stop\n")
                proc.stdin.close()
        codes = []
        for proc in self.procs:
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
            codes.append(proc.returncode)
        self.sel.close()
        return codes


def run_chaos(sock: str, restarts: int, messages: int, jobs: int) -> dict[str, Any]:
    publishers, subscribers, workers = 2, 2, 2
    msgs = Tally(publishers, messages)
    work = Tally(1, jobs)
    done = {"pub": 0, "enq": 0}
    broker = DaemonProcess(sock)
    broker.start()
    roles = Roles(sock)
    total = publishers * messages + jobs
    step = total // (restarts + 1)
    kills = 0
    started = time.monotonic()
    try:
        for i in range(subscribers):
            roles.start("subscriber", i)
        for _ in range(subscribers):  # the durable must exist before anything is published
            line = roles.next(WAIT)
            assert line is not None, "a subscriber did not start"
            assert line[0] == "ready", line
        for i in range(workers):
            roles.start("worker", i)
        for i in range(publishers):
            roles.start("publisher", i, str(messages))
        roles.start("producer", 0, str(jobs))
        while True:
            line = roles.next(WAIT)
            if line is None:
                raise AssertionError(
                    f"no progress for {WAIT} s: {kills} restarts, messages lost so far "
                    f"{msgs.lost()} {msgs.missing()}, jobs {work.lost()} {work.missing()}, "
                    f"done {done}"
                )
            kind, who, ns = line
            if kind == "error":
                raise AssertionError(f"a chaos role failed: {ns[0]}")
            if kind == "pub":
                msgs.add_sent(who, ns)
            elif kind == "got":
                msgs.add_got(who, ns)
            elif kind == "enq":
                work.add_sent(who, ns)
            elif kind == "ran":
                work.add_got(who, ns)
            else:
                done[kind.split("_")[0]] += 1
            if kills < restarts and msgs.received + work.received >= step * (kills + 1):
                broker.kill()
                broker.start()
                kills += 1
            if (
                kills == restarts
                and done == {"pub": publishers, "enq": 1}
                and msgs.complete()
                and work.complete()
            ):
                break
    finally:
        codes = roles.stop()
        broker.stop()
    assert codes == [0] * len(codes), codes
    return {
        "restarts": kills,
        "seconds": round(time.monotonic() - started, 1),
        "messages_published": sum(sum(1 for s in sent if s) for sent in msgs.sent),
        "messages_received": msgs.received,
        "message_duplicates": msgs.duplicates(),
        "messages_lost": msgs.lost(),
        "jobs_enqueued": sum(1 for s in work.sent[0] if s),
        "jobs_ran": work.received,
        "job_duplicates": work.duplicates(),
        "jobs_lost": work.lost(),
    }


def test_chaos_kill_the_broker_while_publishers_and_workers_run(
    sock: str, request: pytest.FixtureRequest
) -> None:
    long = request.config.getoption("--chaos-long")
    if long:
        figures = run_chaos(sock, restarts=20, messages=50_000, jobs=50_000)
    else:
        figures = run_chaos(sock, restarts=3, messages=3_000, jobs=1_500)
    print("chaos:", json.dumps(figures))
    report = os.environ.get("KLIEO_CHAOS_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump(figures, f)
    assert figures["messages_lost"] == 0
    assert figures["jobs_lost"] == 0
    assert figures["restarts"] == (20 if long else 3)
