"""How the driver cuts the NST stage into tasks (faket_cluster.schedule.tilts_per_task)."""

from __future__ import annotations

import pytest
from faket_cluster.schedule import TASK_BYTES, TASK_IMAGES, cut, ramp, taper, tilts_per_task

MB = 1 << 20


@pytest.mark.parametrize(
    ("todo", "members", "tilt_bytes", "nst_batch", "actors", "want"),
    [
        (61, 1, 4 * MB, 1, 1, TASK_IMAGES),  # one tomogram of 1024^2: several tilts per task
        (61, 2, 4 * MB, 1, 1, 2),  # two tomograms share a task: half the tilts give as many images
        (61, 8, 4 * MB, 1, 1, 1),  # eight tomograms per task: one tilt is enough
        (61, 1, 64 * MB, 1, 1, 1),  # 4096^2: a task's three input stacks would pass TASK_BYTES
        (61, 1, 36 * MB, 1, 1, TASK_BYTES // (3 * 36 * MB)),  # 3072^2: as many as the bytes allow (2)
        (8, 1, 4 * MB, 1, 2, 1),  # few tilts for two actors: every actor still gets 4 tasks
        (61, 1, 4 * MB, 3, 1, 3),  # a whole number of NST batches
        (61, 1, 4 * MB, 8, 1, 8),  # at least one NST batch
    ],
)
def test_tilts_per_task(todo, members, tilt_bytes, nst_batch, actors, want):
    assert tilts_per_task(todo, members, tilt_bytes, nst_batch, actors) == want


@pytest.mark.parametrize(
    ("per", "step", "actors", "in_flight", "want"),
    [
        (4, 1, 1, 3, [1, 2, 4]),  # 1024^2: the first task one tilt, then two, then full tasks
        (4, 1, 2, 3, [1, 2, 4, 1, 2, 4]),  # each actor's first tasks (the driver hands out 3 each)
        (16, 1, 1, 3, [1, 2, 4]),  # only the first in_flight tasks are cut small
        (4, 1, 1, 1, [1]),  # one task queued per actor
        (6, 3, 1, 3, [3, 6, 6]),  # whole NST batches
        (1, 1, 4, 3, []),  # 4096^2: tasks are one tilt anyway
        (2, 2, 1, 3, []),  # tasks are one NST batch anyway
    ],
)
def test_ramp(per, step, actors, in_flight, want):
    assert ramp(per, step, actors, in_flight) == want


@pytest.mark.parametrize(
    ("per", "step", "actors", "want"),
    [
        (4, 1, 4, [2, 2, 2, 2, 1, 1, 1, 1]),  # each actor's last tasks: half, then one batch
        (8, 1, 1, [4, 2, 1]),
        (6, 3, 2, [3, 3]),  # whole NST batches
        (1, 1, 4, []),  # tasks of one batch: nothing to shrink
    ],
)
def test_taper(per, step, actors, want):
    assert taper(per, step, actors) == want


@pytest.mark.parametrize("n", [0, 1, 3, 5, 20, 61, 96])
def test_cut_covers_every_tilt_once_in_whole_batches(n):
    head, tail = ramp(4, 1, 2, 3), taper(4, 1, 2)
    sizes = cut(n, 4, head, tail, 1)
    assert sum(sizes) == n and all(0 < s <= 4 for s in sizes)
    if n >= sum(head) + sum(tail) + 4:  # room for all three parts: ramp, full tasks, taper
        assert sizes[: len(head)] == head and sizes[-len(tail) :] == tail and 4 in sizes
    batched = cut(12, 6, [], taper(6, 3, 1), 3)
    assert batched == [6, 3, 3] and all(s % 3 == 0 for s in batched)
