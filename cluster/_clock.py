"""Wall seconds per stage or phase, in the order they ran: the run's ``stage_seconds`` and the
tasks' ``phase_seconds`` (with their processes' CPU seconds, ``phase_cpu_seconds``); and the
run's ``timeline``: when the actors started, warmed up and took their first task, on the wall
clock that a host's processes share."""

from __future__ import annotations

import os
import time

from faket._procs import pool_cpu_seconds


class StageClock:
    """``lap(name)`` closes the stage that began at the last lap (or at the start): its wall
    seconds (``laps``) and the CPU seconds this process spent meanwhile, all its threads
    together and its tilt pools' processes (``cpu_laps``: beside the wall seconds, how many
    cores the stage kept busy)."""

    def __init__(self) -> None:
        self.began = time.time()  # the wall clock: the same for every process of a host
        self.start = self.mark = time.perf_counter()
        self.cpu_mark = _cpu_now()
        self.laps: dict[str, float] = {}
        self.cpu_laps: dict[str, float] = {}

    def since(self) -> float:
        return time.perf_counter() - self.mark

    def lap(self, name: str, seconds: float | None = None) -> None:
        """Close stage ``name``: the time since the last lap, or ``seconds`` of it (the rest stays
        open; the CPU seconds since the last lap all go to ``name``)."""
        took = self.since() if seconds is None else seconds
        self.laps[name] = round(took, 3)
        self.mark += took
        cpu = _cpu_now()
        self.cpu_laps[name] = round(cpu - self.cpu_mark, 3)
        self.cpu_mark = cpu

    def total(self) -> float:
        return time.perf_counter() - self.start


def _cpu_now() -> float:
    """This process's CPU seconds, with those of its tilt pools' jobs (:mod:`faket._procs`)."""
    return time.process_time() + pool_cpu_seconds()


def process_started_at() -> float | None:
    """When this process started, on the wall clock (to the kernel's clock tick, 10 ms), from
    Linux's /proc; None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start, ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def actor_timeline(began: float, laps: dict, at: dict) -> dict:
    """An actor's start in seconds after the run ``began`` (wall clock): its process started
    (``process``), set up (``constructed``), warm (``warm``: VGG-19 loaded, on a GPU one NST
    run), style targets made ahead (``ahead_from``, ``ahead_to``) and its first task
    (``first_task``). laps: its warm-up laps (``init`` first); at: the wall-clock times it
    reported (``clock``: where the laps begin)."""
    out = {"pid": laps.get("pid")}
    steps = [v for k, v in laps.items() if k not in ("pid", "style_ahead")]
    points = {
        "process": at.get("process"),
        "constructed": at["clock"] + laps.get("init", 0.0),
        "warm": at["clock"] + sum(steps),
        "ahead_from": at.get("ahead_from"),
        "ahead_to": at.get("ahead_to"),
        "first_task": at.get("first_task"),
    }
    out.update({k: round(v - began, 2) for k, v in points.items() if v is not None})
    return out
