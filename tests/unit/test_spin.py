"""The spinning event loop: an asyncio loop like any other, which polls
before it sleeps only while someone waits for an answer."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

import klieo_shm
from klieo_shm._spin import spin_us_of


def test_spin_us_comes_from_the_url() -> None:
    assert spin_us_of("shm:///run/k.sock") == 0
    assert spin_us_of("shm:///run/k.sock?spin_us=250") == 250
    assert spin_us_of("shm:///run/k.sock?reconnect_timeout=3&spin_us=0.5") == 0.5
    for bad in ("abc", "-1", "1e9", "nan"):
        with pytest.raises(klieo_shm.InvalidArgument, match="spin_us"):
            spin_us_of(f"shm:///k.sock?spin_us={bad}")
    with pytest.raises(klieo_shm.InvalidArgument):
        klieo_shm.SpinningEventLoop(-5)


def test_it_runs_coroutines_timers_and_sockets() -> None:
    async def main() -> bytes:
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            loop = asyncio.get_running_loop()
            loop.call_later(0.01, b.send, b"ping")
            await asyncio.sleep(0)
            return await asyncio.wait_for(loop.sock_recv(a, 4), 10)

    with asyncio.Runner(loop_factory=klieo_shm.spinning_loop) as runner:
        assert runner.run(main()) == b"ping"


def _cpu_while_sleeping(want: bool) -> float:
    """CPU seconds the loop burns during a 0.4 s sleep, spinning up to 0.3 s
    when ``want``."""
    loop = klieo_shm.SpinningEventLoop(300_000)
    try:
        undo = loop.spin_while(lambda: want)
        assert loop.spin_selector.conditions == 1
        before = time.process_time()
        loop.run_until_complete(asyncio.sleep(0.4))
        used = time.process_time() - before
        undo()
        assert loop.spin_selector.conditions == 0
        return used
    finally:
        loop.close()


def test_it_spins_only_while_an_answer_is_awaited() -> None:
    # generous bounds: CPU time, not wall time, on a shared machine
    assert _cpu_while_sleeping(want=False) < 0.1
    assert _cpu_while_sleeping(want=True) > 0.05
