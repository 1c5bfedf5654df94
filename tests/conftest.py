"""Suite-wide plumbing: an asyncio runner for ``async def`` tests, the
``--run-slow`` switch, and checks that a run leaves no child processes and no
``klieo`` segments in ``/dev/shm`` behind (segments that appeared during the
run and that no live process maps: other runs on the host may own live ones).

``async def`` tests run in a fresh ``asyncio.run`` each, bounded by
``ASYNC_TEST_TIMEOUT``. A fixture value with an ``aclose_after_test()``
coroutine method is closed inside that same loop once the test body is done
(the conformance ``world`` uses it to close its buses).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import os
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

ASYNC_TEST_TIMEOUT = 120.0
SHM_DIR = "/dev/shm"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False, help="also run tests marked slow"
    )
    parser.addoption(
        "--backend",
        action="append",
        default=[],
        metavar="ID",
        help="run the conformance suite only for this backend (memory, shm, nats; repeatable)",
    )
    parser.addoption(
        "--chaos-long",
        action="store_true",
        default=False,
        help="run the long chaos test (20 broker restarts) instead of the short one",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    backends = config.getoption("--backend")
    if backends:
        chosen, dropped = [], []
        for item in items:
            callspec = getattr(item, "callspec", None)
            backend = callspec.params.get("backend") if callspec else None
            (dropped if backend is not None and backend not in backends else chosen).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = chosen
    if not config.getoption("--run-slow"):
        skip = pytest.mark.skip(reason="slow: run with --run-slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


async def _run_test(func: Any, kwargs: dict[str, Any], closers: list[Any]) -> None:
    loop = asyncio.get_running_loop()
    # The blocking flavour runs every call in a thread; several may block at
    # once (claims, nexts, handlers), more than the default pool's 6 on 2 cores.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=64)
    loop.set_default_executor(executor)
    try:
        async with asyncio.timeout(ASYNC_TEST_TIMEOUT):
            try:
                await func(**kwargs)
            finally:
                for closer in closers:
                    await closer.aclose_after_test()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    closers = [v for v in pyfuncitem.funcargs.values() if hasattr(v, "aclose_after_test")]
    asyncio.run(_run_test(pyfuncitem.obj, kwargs, closers))
    return True


# -- leftovers -------------------------------------------------------------


def _klieo_segments() -> set[str]:
    try:
        return {name for name in os.listdir(SHM_DIR) if "klieo" in name}
    except FileNotFoundError:
        return set()


def _mapped_segments() -> set[str]:
    """Names of /dev/shm files some live process maps: a running broker's,
    perhaps another test run's on this host, not leftovers."""
    mapped: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    where = line.find(SHM_DIR + "/")
                    if where >= 0:
                        mapped.add(line[where + len(SHM_DIR) + 1 :].split()[0])
        except OSError:
            continue
    return mapped


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _wait_for_children(before: set[int], seconds: float) -> list[psutil.Process]:
    """Children not in ``before`` still alive after up to ``seconds``."""
    new = [p for p in _children() if p.pid not in before]
    if not new:
        return []
    _, alive = psutil.wait_procs(new, timeout=seconds)
    return alive


@pytest.fixture(autouse=True)
def _no_child_process_left() -> Iterator[None]:
    """Each test reaps every process it started (session daemons were
    started before the first test and so are not counted)."""
    before = {p.pid for p in _children()}
    yield
    alive = _wait_for_children(before, seconds=5.0)
    if alive:
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        pytest.fail(f"test left child processes running: {[p.pid for p in alive]}")


@pytest.fixture(scope="session", autouse=True)
def _no_child_process_at_session_end() -> Iterator[None]:
    """Session fixtures (daemons) reap their processes too. Set up before
    every other session fixture, so checked after they are all torn down."""
    yield
    alive = _wait_for_children(set(), seconds=5.0)
    if alive:
        pytest.fail(f"child processes alive at session end: {[p.pid for p in alive]}")


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SEGMENTS_BEFORE] = _klieo_segments()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        return  # the controlling process checks, once every worker has exited
    new = _klieo_segments() - config.stash.get(_SEGMENTS_BEFORE, set())
    left = new - _mapped_segments() if new else new
    if left:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"LEFTOVER: klieo segments in {SHM_DIR}: {sorted(left)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_SEGMENTS_BEFORE = pytest.StashKey[set[str]]()
