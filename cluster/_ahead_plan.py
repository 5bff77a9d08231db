"""The driver's side of the style Gram targets made ahead (:mod:`faket_cluster._ahead`): which
batches the first tomogram's NST tasks will ask for, the targets the driver makes on the idle GPU
while a local Ray and the actors start, and the early actors asked to make (or keep) them.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import Future

from faket._threads import beside

from ._hooks import DRIVER_AHEAD_CPU_ENV, NO_AHEAD_ENV, NO_DRIVER_AHEAD_ENV
from .fleet import ActorPlan, Fleet
from .spec import RunSpec


def _first_tasks(spec: RunSpec, root, actors: int, alone: bool) -> tuple | None:
    """The first tomogram's group, its content size and its NST tasks' tilts as the NST stage will
    plan them (``alone``: planned for it alone, as :func:`pipelined` does; else with every
    tomogram prepared); None where it holds no style stack or has a stylised tilt already."""
    from faket.store import done_mask

    from .schedule import nst_jobs

    first = spec.tomograms[0]
    g = root[first.name]
    if first.style is None or "style" not in g or os.environ.get(NO_AHEAD_ENV) or done_mask(g, "faket").any():
        return None
    others = {t.name for t in spec.tomograms[1:]} if alone else set()
    tasks = [list(tilts) for names, tilts in nst_jobs(root, spec, others, actors)[0] if first.name in names]
    return g, [int(x) for x in g["content"].shape[-2:]], tasks


def style_targets_beside_start(spec: RunSpec, weights, plan: ActorPlan, laid_out: Future) -> Future | None:
    """The first tomogram's style Gram targets made in a thread of the driver on the GPU while a
    local Ray and the GPU actors start (the GPU is idle until then; :mod:`faket_cluster._ahead`),
    once the fresh store is laid out; None where the actors do not compute on a GPU this
    process sees (DRIVER_AHEAD_CPU_ENV: on the CPU too, for tests) or NO_DRIVER_AHEAD_ENV is set.
    The Future's result: ``{"made": the targets (StyleAhead.export), "span": (from, to)}``, the
    span on the wall clock (the run's timeline)."""
    from ._ahead import made_beside_start

    if not plan.use_gpu or spec.tomograms[0].style is None or os.environ.get(NO_DRIVER_AHEAD_ENV):
        return None
    device = (
        "cuda" if plan.on_gpu and _cuda_here() else "cpu" if os.environ.get(DRIVER_AHEAD_CPU_ENV) else None
    )
    if device is None:
        return None
    alone = len(spec.tomograms) > 1  # as the run will plan with GPU actors up (see engine.run)

    def work() -> dict:
        began = time.time()
        first = _first_tasks(spec, laid_out.result(), plan.count, alone)
        if first is None:
            return {"made": {}, "span": (began, time.time())}
        g, size, tasks = first
        key = (str(spec.store), g.path)
        threads = int(spec.resources.cpus_per_actor)
        made = made_beside_start(
            weights.state_dict,
            spec.nst,
            device,
            threads,
            key,
            str(spec.tomograms[0].style),
            (size[0], size[1]),
            tasks,
        )
        return {"made": made, "span": (began, time.time())}

    return beside(work, "faket-style-targets")


#: CUDA's device attribute of the compute mode, and its value that lets processes share a GPU.
_COMPUTE_MODE, _SHARED = 20, 0


def _cuda_here() -> bool:
    """Whether this process sees a GPU that other processes may use at the same time: in an
    exclusive compute mode (some clusters) the driver's CUDA context would keep the actor's
    out, and the driver leaves the GPU alone. The mode is asked of CUDA's driver library."""
    import ctypes

    import torch

    if not torch.cuda.is_available():
        return False
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        dev, mode = ctypes.c_int(), ctypes.c_int(-1)
        if cuda.cuInit(0) or cuda.cuDeviceGet(ctypes.byref(dev), 0):
            return False
        if cuda.cuDeviceGetAttribute(ctypes.byref(mode), _COMPUTE_MODE, dev):
            return False
    except (OSError, AttributeError):
        return False
    return mode.value == _SHARED


def style_ahead(
    spec: RunSpec, root, fleet: Fleet, actors: int, alone: bool, made: Future | None = None
) -> None:
    """Ask the early actors to make the first tomogram's style Gram targets while they wait for
    its prepare stage (:mod:`faket_cluster._ahead`): the batches of its NST tasks as the NST
    stage will plan them (see :func:`_first_tasks`), dealt to the actors in turn, with those
    the driver made (``made``, :func:`style_targets_beside_start`) once they are there."""
    first = _first_tasks(spec, root, actors, alone)
    if first is None:
        return
    g, size, tasks = first
    style = str(spec.tomograms[0].style)

    def ask(targets: dict) -> None:
        for k, worker in enumerate(fleet.workers):
            mine = tasks[k :: len(fleet.workers)]
            if mine:
                tilts = {i for t in mine for i in t}
                theirs = {key: v for key, v in targets.items() if set(key[2]) <= tilts}
                worker.style_ahead.remote(str(spec.store), g.path, style, size, mine, fleet.weights, theirs)

    if made is None:
        ask({})
        return

    def asked(done: Future) -> None:
        with contextlib.suppress(Exception):  # a failed start, or a run that ended meanwhile
            ask(done.result()["made"] if done.exception() is None else {})

    made.add_done_callback(asked)
