"""Per-tilt numpy work in processes of one thread each, where threads would queue for Python's lock.

The noise step walks a tilt in cache-sized blocks, a few numpy calls each, and takes Python's
lock back between the calls (:mod:`faket._pairwise`). On a 16-core GPU host, 15 threads of one
process made a 4096^2 tilt's noise in 0.076 s, 15 processes of one thread in 0.058 s (statistics:
0.045 against 0.032 s; H100 machine, ``benchmarks/results/gpu-h100-20261127b/``); on two cores
the two are the same (0.083 against 0.085 s at 2048^2, this project's 2-core VM), and an engine run
gains nothing there (``benchmarks/results/tilt-processes-cpu-vm.json``). So the tilts go to
processes only where many run at once (:func:`processes_pay`). The processes fork from a
server that imported numpy, zarr and faket's I/O, noise and store once (Python's ``forkserver``: no
copy of the caller, its threads or its Ray connection). Work and results cross as pickles: pass
the run store's zarr arrays (their metadata, not their data) and small results, never images.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from multiprocessing import spawn
from typing import Any, Callable, Sequence

from .errors import FaketInputError

#: From this many tilts at once their work goes to processes (see the module's figures).
PROCESS_MIN = 8
#: Cores a pool leaves to the rest of a machine of PROCESS_MIN cores or more: the pool's processes
#: keep their cores busy where threads queued for Python's lock, and beside them a local Ray starts
#: and its actor warms up (at Ray's worker niceness, 15: it gets no core the pool wants).
SPARE_CORES = 2
#: "1": processes for any count of workers above one, "0": threads always (benchmarks, tests).
PROCESSES_ENV = "FAKET_TILT_PROCESSES"
_PRELOAD = ["numpy", "zarr", "faket.io", "faket.noise", "faket.store", "faket.pipeline"]
_NAME = "faket-tilt-"  # the pool processes' names begin so
_cpu = {"seconds": 0.0}
_cpu_lock = threading.Lock()
_patch_lock = threading.Lock()


def processes_pay(workers: int) -> bool:
    """Whether ``workers`` tilts at once run faster in processes than in threads
    (:data:`PROCESSES_ENV` decides where it is set: :func:`chosen`)."""
    choice = chosen()
    if workers <= 1:
        return False
    if choice is not None:
        return choice
    return workers >= PROCESS_MIN


def chosen() -> bool | None:
    """What :data:`PROCESSES_ENV` asks for: processes (True), threads (False) or the machine's
    choice (None, where it is unset or empty). Raises :class:`FaketInputError` (one line) for
    any other value."""
    value = os.environ.get(PROCESSES_ENV, "")
    if value.strip() in ("", "0", "1"):
        return None if not value.strip() else value.strip() == "1"
    raise FaketInputError(
        f"environment variable {PROCESSES_ENV}={value!r} is not allowed: use 1 (processes), "
        f"0 (threads) or leave it unset (processes from {PROCESS_MIN} cores on)"
    )


def pool_size(workers: int) -> int:
    """The processes of a pool for ``workers`` tilts at once (see :data:`SPARE_CORES`)."""
    return workers - SPARE_CORES if workers >= PROCESS_MIN else workers


def tilt_pool(workers: int) -> ProcessPoolExecutor:
    """Processes for ``workers`` tilts at once (:data:`SPARE_CORES` fewer on many cores); shut it
    down when done (``with``). The server they fork from starts now (its imports overlap the
    caller's next steps); each process starts with a job that finds none idle, so there are never
    more processes than jobs."""
    _start_without_main()
    context = _TiltContext()
    context.set_forkserver_preload(_PRELOAD)  # where this process started no server before
    pool = ProcessPoolExecutor(pool_size(workers), mp_context=context, initializer=_set_up)
    pool.submit(os.getpid)
    return pool


class _TiltProcess(multiprocessing.context.ForkServerProcess):
    """A pool process, named so that it starts without its caller's main module."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = _NAME + self.name.rsplit("-", 1)[-1]


class _TiltContext(multiprocessing.context.ForkServerContext):
    Process = _TiltProcess


def pool_if_it_pays(workers: int) -> contextlib.AbstractContextManager[Executor | None]:
    """A :func:`tilt_pool` for ``workers`` tilts at once where :func:`processes_pay`, else None
    (threads): ``with pool_if_it_pays(n) as pool: ...``."""
    return tilt_pool(workers) if processes_pay(workers) else contextlib.nullcontext()


def _start_without_main() -> None:
    """Python starts a forkserver or spawn process by running its parent's main module again (as
    ``__mp_main__``): the ``faket-cluster`` script would import Ray and the CLI in every pool
    process, and a user's driver script without a ``__main__`` guard would run again there. Pool
    processes need none of it (their jobs are faket's functions), so their start leaves it out;
    any other process starts as Python starts it."""
    with _patch_lock:
        if getattr(spawn.get_preparation_data, "_faket", False):
            return
        original = spawn.get_preparation_data

        def prepared(name: str) -> dict:
            data = original(name)
            if name.startswith(_NAME):
                data.pop("init_main_from_path", None)
                data.pop("init_main_from_name", None)
            return data

        prepared._faket = True  # type: ignore[attr-defined]
        spawn.get_preparation_data = prepared


def _set_up() -> None:
    """A pool process writes tilts all its life: keep its freed chunk buffers; and it keeps to one
    core: its tilts' chunks are coded in its own thread (the pool leaves the rest to others)."""
    from ._shards import code_chunks_in_caller
    from .store import keep_freed_chunk_memory

    keep_freed_chunk_memory()
    code_chunks_in_caller()


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
