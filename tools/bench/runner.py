"""Run one round of one workload for one peer: one spawned process per role.

Every role connects, then meets the others (and this runner) at a barrier; only
then does its clock start, so process start-up and connection set-up are never
measured. The runner enforces the run's deadline: a role that does not report in
time is terminated (then killed), and the run is reported as failed with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import threading
import time
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

from tools.bench.workloads.base import Impl, RoleContext, RoleFn, RoleResult, RunParams

_GRACE = 3.0  # seconds a finished run waits for its role processes to exit
ROLE_GRACE = 5.0  # past the roles' deadline, the time they get to report their own error
UNSUPPORTED = "unsupported: "


class RunFailed(Exception):
    """A run did not produce figures; the message says why.

    ``unsupported`` is set when a role raised ``NotImplementedError``: the peer does
    not offer what the workload needs, and the row is reported as skipped.
    """

    def __init__(self, reason: str, unsupported: bool = False) -> None:
        super().__init__(reason)
        self.unsupported = unsupported


def _failed(err: str) -> RunFailed:
    if err.startswith(UNSUPPORTED):
        return RunFailed(err[len(UNSUPPORTED) :], unsupported=True)
    return RunFailed(err)


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return text if len(text) <= 300 else text[:297] + "..."


def _child_main(fn: RoleFn, rc: RoleContext, results: Any) -> None:
    """Body of a role process."""
    try:
        if inspect.iscoroutinefunction(fn):
            if rc.options.get("loop") == "spin":  # klieo_shm's spinning loop
                import klieo_shm

                with asyncio.Runner(loop_factory=klieo_shm.spinning_loop) as runner:
                    out = runner.run(fn(rc))
            else:
                out = asyncio.run(fn(rc))
        else:
            res = fn(rc)
            out = asyncio.run(_await(res)) if inspect.isawaitable(res) else res
        results.put((rc.index, dict(out), None))
    except BaseException as exc:
        rc.abort()
        if isinstance(exc, NotImplementedError):
            results.put((rc.index, None, f"{UNSUPPORTED}{exc}"))
        else:
            results.put((rc.index, None, f"{rc.role}: {describe(exc)}"))


async def _await(aw: Any) -> RoleResult:
    result: RoleResult = await aw
    return result


def run_roles(impl: Impl, params: RunParams, ctx: SpawnContext) -> list[RoleResult]:
    """Run ``impl``'s roles once and return their outputs in role order.

    Raises :class:`RunFailed` on any role error, a process death or the deadline.
    """
    shared = impl.make_shared(ctx, params) if impl.make_shared else {}
    go = ctx.Barrier(len(impl.roles) + 1)
    results = ctx.Queue()
    procs: list[SpawnProcess] = []
    try:
        for index, role in enumerate(impl.roles):
            rc = RoleContext(params, index, role.name, role.options, shared, go)
            proc = ctx.Process(
                target=_child_main,
                args=(role.fn, rc, results),
                name=f"bench-{params.workload}-{role.name}",
                daemon=True,
            )
            proc.start()
            procs.append(proc)
        try:
            go.wait(timeout=max(0.01, params.remaining() + ROLE_GRACE))
        except threading.BrokenBarrierError:
            reason = _first_error(results, 2.0)
            if reason:
                raise _failed(reason) from None
            raise RunFailed("roles were not ready before the run's deadline") from None
        return _collect(results, procs, params, [r.name for r in impl.roles])
    finally:
        reap(procs)
        results.close()
        results.cancel_join_thread()


def _collect(
    results: Any, procs: list[SpawnProcess], params: RunParams, names: list[str]
) -> list[RoleResult]:
    outputs: dict[int, RoleResult] = {}
    while len(outputs) < len(procs):
        left = params.remaining() + ROLE_GRACE
        try:
            index, out, err = results.get(timeout=min(0.25, max(0.01, left)))
        except queue.Empty:
            pending = [i for i in range(len(procs)) if i not in outputs]
            if left <= 0:
                waiting = ", ".join(names[i] for i in pending)
                raise RunFailed(f"timed out: still running at the deadline: {waiting}") from None
            dead = [i for i in pending if procs[i].exitcode is not None]
            if dead:
                late = _drain(results, 1.0)
                for late_index, late_out, late_err in late:
                    if late_err or late_out is None:
                        raise _failed(late_err or "a role returned nothing") from None
                    outputs[late_index] = late_out
                for i in dead:
                    if i not in outputs:
                        code = procs[i].exitcode
                        raise RunFailed(f"{names[i]}: process died (exit code {code})") from None
            continue
        if err:
            raise _failed(err)
        outputs[index] = out
    return [outputs[i] for i in range(len(procs))]


def _drain(results: Any, wait: float) -> list[tuple[int, RoleResult | None, str | None]]:
    got: list[tuple[int, RoleResult | None, str | None]] = []
    end = time.monotonic() + wait
    while True:
        try:
            got.append(results.get(timeout=max(0.01, end - time.monotonic())))
        except queue.Empty:
            return got


def _first_error(results: Any, wait: float) -> str | None:
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            _index, _out, err = results.get(timeout=max(0.01, end - time.monotonic()))
        except queue.Empty:
            return None
        if err:
            return str(err)
    return None


def reap(procs: list[SpawnProcess], grace: float = _GRACE) -> None:
    """Wait briefly for processes to exit, then terminate and finally kill them."""
    end = time.monotonic() + grace
    for proc in procs:
        proc.join(timeout=max(0.0, end - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=1.0)
    for proc in procs:
        with contextlib.suppress(ValueError):
            proc.close()
