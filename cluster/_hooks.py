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
#: "spin:S" spends them in Python instead, like a thread launching small GPU kernels.
KERNEL_ENV = "FAKET_ENGINE_KERNEL"
#: Test hook: a file path; after its first task an actor holds each next task until the file exists.
HOLD_ENV = "FAKET_TEST_HOLD"
#: Test hook: "tomogram:path"; that tomogram's prepare task waits (at most a minute) for the file.
HOLD_PREPARE_ENV = "FAKET_TEST_HOLD_PREPARE"


def stand_in(kernel: str, tilts: int) -> None:
    """KERNEL_ENV's device time for ``tilts`` tilts: slept (``sleep:S``) or spun in Python,
    holding its lock as a thread that launches GPU kernels does (``spin:S``)."""
    seconds = float(kernel.partition(":")[2] or 0) * tilts
    if not kernel.startswith("spin:"):
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


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


def maybe_crash() -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if marker and not os.path.exists(marker):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)
