"""The engine's test and benchmark hooks, switched on by environment variables (none in a real run)."""

from __future__ import annotations

import os
import time

#: Test hook: when this file names a path that does not exist yet, the first NST
#: task creates it and kills its actor process hard (os._exit) before writing.
CRASH_ONCE_ENV = "FAKET_TEST_CRASH_ONCE"
#: Test hook: "tomogram:tilt" of a tilt whose task always raises.
FAIL_TILT_ENV = "FAKET_TEST_FAIL_TILT"
#: Benchmark hook: "identity" replaces the NST by the identity (benchmarks/engine_feed.py measures
#: the engine's data path alone); "sleep:S" by the identity after S seconds per tilt, a stand-in
#: for a GPU's compute that holds no CPU (benchmarks/engine_scaling.py: k actors on k GPUs);
#: "spin:S" spends them in Python instead, like a thread launching small GPU kernels;
#: "launch:N" runs N one-element torch ops per tilt, each letting go of Python's lock and taking it
#: back, as a thread launching a GPU's kernels does (engine_feed.py --kernel launch).
KERNEL_ENV = "FAKET_ENGINE_KERNEL"
#: Benchmark hook: a file where each "launch:N" kernel appends its thread's wall, CPU and run-queue seconds.
LAUNCH_LOG_ENV = "FAKET_ENGINE_LAUNCH_LOG"
#: Test hook: a file path; after its first task an actor holds each next task until the file exists.
HOLD_ENV = "FAKET_TEST_HOLD"
#: Test hook: "tomogram:path"; that tomogram's prepare task waits (at most a minute) for the file.
HOLD_PREPARE_ENV = "FAKET_TEST_HOLD_PREPARE"
#: Test hook: a file path an actor creates once it has made its style targets ahead (with
#: HOLD_PREPARE_ENV naming the same file, the first tomogram's prepare waits for them).
AHEAD_DONE_ENV = "FAKET_TEST_AHEAD_DONE"
#: Benchmark hook: "1" keeps early GPU actors from making style targets ahead (cluster/_ahead.py),
#: to measure what that gains (benchmarks/engine_feed.py --no-style-ahead).
NO_AHEAD_ENV = "FAKET_ENGINE_NO_STYLE_AHEAD"
#: Set: the driver makes no style targets beside Ray's start (cluster/_ahead.made_beside_start):
#: the actors make them all (to measure what the driver's part gains).
NO_DRIVER_AHEAD_ENV = "FAKET_ENGINE_NO_DRIVER_STYLE_AHEAD"
#: Test hook: the driver makes them on the CPU too, for GPU actors declared to Ray that compute
#: on the CPU (as tests do); without it only a GPU the driver sees is used.
DRIVER_AHEAD_CPU_ENV = "FAKET_TEST_DRIVER_AHEAD_CPU"
#: Test hook: "tomogram" or "tomogram:fail"; the driver's write of that tomogram's attributes
#: beside the NST (cluster/_meta.py) waits until one of its tilts is stylised in the store
#: (OSError after a minute), or raises OSError.
ATTRS_ENV = "FAKET_TEST_ATTRS"


def stand_in(kernel: str, tilts: int) -> None:
    """KERNEL_ENV's device time for ``tilts`` tilts: slept (``sleep:S``), spun in Python,
    holding its lock as a thread that launches GPU kernels does (``spin:S``), or spent in
    ``launch:N`` tiny torch ops per tilt (see :func:`launches`)."""
    if kernel.startswith("launch:"):
        launches(int(kernel.partition(":")[2]) * tilts)
        return
    seconds = float(kernel.partition(":")[2] or 0) * tilts
    if not kernel.startswith("spin:"):
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def launches(n: int) -> float:
    """``n`` in-place adds to a one-element CPU tensor; returns their seconds. Each op lets go of
    Python's lock while it runs and takes it back after, as each kernel launch of a GPU's NST
    does: the time a GPU actor's launching thread loses to its other threads shows here. Where
    LAUNCH_LOG_ENV names a file, a line "wall cpu runqueue" (seconds) is appended to it: what
    the thread computed, waited for a CPU, and the rest, blocked (on Python's lock)."""
    import torch

    x = torch.zeros(1)
    cpu0, queued0 = _thread_schedstat()
    start = time.perf_counter()
    for _ in range(n):
        x.add_(1.0)
    wall = time.perf_counter() - start
    log = os.environ.get(LAUNCH_LOG_ENV)
    if log:
        cpu1, queued1 = _thread_schedstat()
        with open(log, "a") as f:
            f.write(f"{wall:.6f} {cpu1 - cpu0:.6f} {queued1 - queued0:.6f}\n")
    return wall


def _thread_schedstat() -> tuple[float, float]:
    """This thread's seconds on a CPU and waiting for one while runnable (Linux; zeros elsewhere)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, queued, _ = f.read().split()
    except OSError:
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(queued) / 1e9


def maybe_hold(tasks_started: int) -> None:
    """The HOLD_ENV hook: a test can act on a run that is known to be mid-way."""
    marker = os.environ.get(HOLD_ENV)
    while marker and tasks_started > 1 and not os.path.exists(marker):
        time.sleep(0.02)


def maybe_hold_prepare(tomogram: str, limit_s: float = 60.0) -> None:
    """The HOLD_PREPARE_ENV hook: a test can see what the engine does while a tomogram prepares."""
    name, _, marker = os.environ.get(HOLD_PREPARE_ENV, "").partition(":")
    end = time.monotonic() + limit_s
    while name == tomogram and not os.path.exists(marker) and time.monotonic() < end:
        time.sleep(0.02)


def attrs_hook(tomogram: str, stylised, limit_s: float = 60.0) -> None:
    """The ATTRS_ENV hook: a test sees the NST run before the attributes are written (``stylised()``:
    whether a tilt of the tomogram is stylised in the store), or their write fail."""
    name, _, how = os.environ.get(ATTRS_ENV, "").partition(":")
    if name != tomogram:
        return
    if how == "fail":
        raise OSError(f"{ATTRS_ENV}: the attributes of {tomogram} are not written")
    end = time.monotonic() + limit_s
    while not stylised():
        if time.monotonic() > end:
            raise OSError(f"{ATTRS_ENV}: no tilt of {tomogram} was stylised within {limit_s:.0f} s")
        time.sleep(0.02)


def mark_ahead_done() -> None:
    """The AHEAD_DONE_ENV hook."""
    marker = os.environ.get(AHEAD_DONE_ENV)
    if marker:
        open(marker, "a").close()


def maybe_crash() -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if marker and not os.path.exists(marker):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)
