"""Per-tilt numpy work in processes of one thread each, where threads would queue for Python's lock.

The noise step walks a tilt in cache-sized blocks, a few numpy calls each, and takes Python's
lock back between the calls (:mod:`faket._pairwise`). On a 16-core GPU host, 15 threads of one
process made a 4096^2 tilt's noise in 0.076 s, 15 processes of one thread in 0.058 s (statistics:
0.045 against 0.032 s; H100 machine, ``benchmarks/results/gpu-h100-20261127b/``); on two cores
the two are the same (0.083 against 0.085 s at 2048^2, this project's 2-core VM). So the tilts go
to processes only where many run at once (:func:`processes_pay`). The processes fork from a
server that imported numpy, zarr and faket's noise and store once (Python's ``forkserver``: no
copy of the caller, its threads or its Ray connection). Work and results cross as pickles: pass
the run store's zarr arrays (their metadata, not their data) and small results, never images.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from typing import Any, Callable, Sequence

#: From this many tilts at once their work goes to processes (see the module's figures).
PROCESS_MIN = 8
#: Cores a pool leaves to the rest of a machine of PROCESS_MIN cores or more: the pool's processes
#: keep their cores busy where threads queued for Python's lock, and beside them a local Ray starts
#: and its actor warms up (at Ray's worker niceness, 15: it gets no core the pool wants).
SPARE_CORES = 2
#: "1": processes for any count of workers above one, "0": threads always (benchmarks, tests).
PROCESSES_ENV = "FAKET_TILT_PROCESSES"
_PRELOAD = ["numpy", "zarr", "faket.noise", "faket.store", "faket.pipeline"]
_cpu = {"seconds": 0.0}
_cpu_lock = threading.Lock()


def processes_pay(workers: int) -> bool:
    """Whether ``workers`` tilts at once run faster in processes than in threads
    (:data:`PROCESSES_ENV` decides where it is set)."""
    chosen = os.environ.get(PROCESSES_ENV, "")
    if workers <= 1:
        return False
    if chosen in ("0", "1"):
        return chosen == "1"
    return workers >= PROCESS_MIN


def pool_size(workers: int) -> int:
    """The processes of a pool for ``workers`` tilts at once (see :data:`SPARE_CORES`)."""
    return workers - SPARE_CORES if workers >= PROCESS_MIN else workers


def tilt_pool(workers: int) -> ProcessPoolExecutor:
    """Processes for ``workers`` tilts at once (:data:`SPARE_CORES` fewer on many cores), started
    now (their start overlaps the caller's next steps); shut it down when done (``with``)."""
    count = pool_size(workers)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)  # where this process started no server before
    pool = ProcessPoolExecutor(count, mp_context=context, initializer=_set_up)
    for _ in range(count):  # each submit starts a process while none is idle
        pool.submit(os.getpid)
    return pool


def _set_up() -> None:
    """A pool process writes tilts all its life: keep its freed chunk buffers."""
    from .store import keep_freed_chunk_memory

    keep_freed_chunk_memory()


def each_in(
    pool: Executor,
    work: Callable[..., Any],
    jobs: Sequence[tuple],
    done: Callable[[Any], None] | None = None,
) -> None:
    """``work(*job)`` for every job on ``pool``; ``done(result)`` here as each ends. The first
    error is raised once the running jobs end (the others are not started). The jobs' CPU
    seconds add to :func:`pool_cpu_seconds`. Two jobs per process wait in the pool at most, so
    that a caller that stops early (an error, Ctrl-C) waits for few."""
    window = 2 * getattr(pool, "_max_workers", len(jobs))
    queue = list(reversed(jobs))
    pending: set = set()
    while queue or pending:
        while queue and len(pending) < window:
            pending.add(pool.submit(_timed, work, *queue.pop()))
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            if future.exception() is not None:
                wait(pending)
                raise future.exception()  # type: ignore[misc]
            result, cpu = future.result()
            with _cpu_lock:
                _cpu["seconds"] += cpu
            if done is not None:
                done(result)


def pool_cpu_seconds() -> float:
    """The CPU seconds that the jobs of :func:`each_in` spent in pool processes, all their threads,
    since this process started (to add to its own ``time.process_time()``)."""
    with _cpu_lock:
        return _cpu["seconds"]


def _timed(work: Callable[..., Any], *job: Any) -> tuple[Any, float]:
    began = time.process_time()
    return work(*job), time.process_time() - began
