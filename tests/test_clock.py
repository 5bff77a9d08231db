"""cluster/_clock.py: a stage's wall and CPU seconds, the wall clock of a process's start, and an
actor's timeline from it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from faket_cluster._clock import StageClock, actor_timeline, process_started_at


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_process_started_at_is_when_the_process_began():
    """A child process's start on the wall clock lies between just before it was spawned and
    its own first line (to the kernel's 10 ms tick); this process began before both."""
    before = time.time()
    out = subprocess.run(
        [sys.executable, "-c", "import time; from faket_cluster._clock import process_started_at; "
         "print(process_started_at(), time.time())"], capture_output=True, text=True, check=True)
    started, running = map(float, out.stdout.split())
    assert before - 0.02 <= started <= running
    assert started - before < 0.5  # Python's start and imports come after
    assert process_started_at() < before


def test_actor_timeline_puts_the_laps_on_the_run_clock():
    laps = {"pid": 7, "init": 2.0, "imports": 0.5, "model": 0.25, "first_nst": 0.25, "style_ahead": 1.5}
    at = {"process": 103.0, "clock": 104.0, "ahead_from": 107.0, "ahead_to": 108.5, "first_task": 109.0}
    assert actor_timeline(100.0, laps, at) == {
        "pid": 7, "process": 3.0, "constructed": 6.0, "warm": 7.0, "ahead_from": 7.0, "ahead_to": 8.5,
        "first_task": 9.0}
    # no /proc, no targets made ahead: only what was reported
    assert actor_timeline(100.0, {"pid": 1, "init": 1.0}, {"process": None, "clock": 100.5}) == {
        "pid": 1, "constructed": 1.5, "warm": 1.5}


def test_a_stage_clock_counts_the_cpu_seconds_of_each_lap():
    """A lap that computes has CPU seconds, as many as it computed; a lap that waits has almost
    none; neither has more than the wall seconds on every core."""
    clock = StageClock()
    spent = time.process_time() + 0.2
    while time.process_time() < spent:  # at least 0.2 s of CPU
        sum(range(1000))
    clock.lap("compute")
    time.sleep(0.3)
    clock.lap("wait")
    assert list(clock.cpu_laps) == list(clock.laps) == ["compute", "wait"]
    assert clock.cpu_laps["compute"] >= 0.2 and clock.laps["compute"] >= 0.2
    assert clock.cpu_laps["wait"] < 0.1 <= clock.laps["wait"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    assert all(clock.cpu_laps[k] <= clock.laps[k] * cores + 0.01 for k in clock.laps)
