"""The worker runtime: run a job handler over a queue, in one or many processes.

    from klieo_shm.worker import run_pool, WorkerOptions
    run_pool("myagents:handle", "tasks", processes=4)

See ``_runner`` for what one worker does with each job and ``_pool`` for the
process pool; ``klieo-shm worker module:function --queue Q -n N`` runs a pool
from the shell.
"""

from __future__ import annotations

from ._pool import PoolResult as PoolResult
from ._pool import load_handler as load_handler
from ._pool import run_pool as run_pool
from ._runner import JobHandler as JobHandler
from ._runner import WorkerOptions as WorkerOptions
from ._runner import WorkerStats as WorkerStats
from ._runner import backoff_delay as backoff_delay
from ._runner import handle_one as handle_one
from ._runner import run_worker as run_worker
