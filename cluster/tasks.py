"""Ray tasks of the engine besides the NST: preparing tomograms, the noise model, reconstruction, export.

Workers only write into arrays the driver created (:mod:`faket_cluster.layout`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np
import ray

from ._clock import StageClock
from ._hooks import maybe_hold_prepare
from .spec import TomogramSpec


def remote_functions():
    """The engine's Ray tasks; Ray retries none of them (the driver's one policy does)."""

    @ray.remote(num_cpus=1, max_retries=0)
    def prepare(store: str, tomo: TomogramSpec, model_json: dict, content_sigma: float, workers: int) -> dict:
        maybe_hold_prepare(tomo.name)
        return prepare_tomogram(store, tomo, model_json, content_sigma, workers)

    @ray.remote(num_cpus=1, max_retries=0)
    def estimate(pairs: list, order: int, workers: int) -> dict:
        return estimate_noise_model(pairs, order, workers)

    @ray.remote(num_cpus=1, max_retries=0)
    def reconstruct_task(store: str, name: str, settings, angles: list) -> list:
        from faket.reconstruction import reconstruct
        from faket.store import open_store, write_volume
        from faket.store_check import read_tilts

        g = open_store(store)[name]
        vol = reconstruct(read_tilts(g, "faket"), np.asarray(angles), settings).numpy()
        g["reconstruction"].attrs["voxel_size"] = float(g.attrs.get("voxel_size", 1.0)) * settings.binning
        write_volume(g, "reconstruction", vol)
        return list(vol.shape)

    @ray.remote(num_cpus=1, max_retries=0)
    def export_task(store: str, out: str, names: list) -> list:
        from faket.export import export_store

        # the export folder is the run's own output: each run replaces it whole
        return [str(p) for p in export_store(store, out, names, overwrite=True)]

    return prepare, estimate, reconstruct_task, export_task


def estimate_noise_model(pairs: list, order: int, workers: int, pool=None) -> dict:
    """The noise model's JSON (``model``) from (reference, noiseless) file pairs, and the wall
    seconds of opening them (the files' scans) and of the statistics (``seconds``; the process's
    CPU seconds meanwhile: ``cpu_seconds``). pool: processes that make the statistics instead of
    threads (:func:`faket._procs.tilt_pool`; their CPU seconds count too)."""
    from faket.io import open_mrc
    from faket.noise import NoiseModel

    clock = StageClock()
    with contextlib.ExitStack() as files:  # closed after: the driver may be the caller
        stacks = [
            (
                files.enter_context(open_mrc(r, role="reference", workers=workers)),
                files.enter_context(open_mrc(c, role="noiseless", workers=workers)),
            )
            for r, c in pairs
        ]
        clock.lap("open")
        model = NoiseModel.estimate(
            [(a.mapped(), b.mapped()) if pool is not None else (a.data, b.data) for a, b in stacks],
            order,
            [{"reference": str(r), "noiseless": str(c)} for r, c in pairs],
            workers,
            pool,
        )
        clock.lap("statistics")
        return {"model": model.to_json(), "seconds": clock.laps, "cpu_seconds": clock.cpu_laps}


def prepare_tomogram(
    store: str,
    tomo: TomogramSpec,
    model_json: dict | Callable[[], dict],
    content_sigma: float,
    workers: int = 1,
    pool=None,
    write_attrs: bool = True,
) -> dict:
    """Write noiseless and style tilts (where its group holds those stacks: see
    :func:`faket.store.holder`), labels, NOISY and CONTENT of one tomogram (idempotent); returns
    its name, tilt count, its stacks' value ranges (``ranges``), the wall seconds of each phase
    (``seconds``) and the process's CPU seconds meanwhile, all its threads (``cpu_seconds``).

    Only what is not done yet is written, into arrays the driver created.
    model_json: the noise model, or what returns it once it is estimated: only the noise
    needs it, so the noiseless, style and labels phases run before it is asked for (``model``:
    the wait), beside its estimate where that runs in another thread.
    workers: the CPUs Ray gave the task; tilts are made on that many threads
    (each tilt is its own shard), a projection uses that many torch threads.
    pool: processes that make the noise phase's tilts instead (:func:`faket._procs.tilt_pool`).
    write_attrs: False leaves the group's attributes (the ranges among them: the prepare is
    complete once they are written) to the caller, in the result's ``attrs`` (see
    :mod:`faket_cluster._meta`); no ``attrs`` phase then.
    """
    from faket.io import open_mrc, read_tlt
    from faket.noise import NoiseModel
    from faket.pipeline import copy_tilts, prepare_noise
    from faket.store import (
        StoreSink,
        TiltReader,
        done_mask,
        holder,
        keep_freed_chunk_memory,
        open_store,
        write_volume,
    )

    keep_freed_chunk_memory()  # a Ray worker process, reused for task after task
    clock = StageClock()
    root = open_store(store)
    g = root[tomo.name]
    holds_style = "style" in g  # or another tomogram of the run holds the same style stack
    # their ranges, as they are written
    sink = StoreSink(g, track=("content", "noisy", "style") if holds_style else ("content", "noisy"))
    angles = read_tlt(tomo.angles)
    if "noiseless" in g:
        clean, voxel = g, _noiseless(sink, tomo, angles, workers)
    else:  # another tomogram of the run holds the same projections, prepared before this one
        clean = holder(root, g, "noiseless")
        voxel = float(clean.attrs["voxel_size"])
    clock.lap("noiseless")
    if holds_style:
        assert tomo.style is not None  # the spec checked it
        with open_mrc(tomo.style, role="style", workers=workers) as st:
            copy_tilts(sink, "style", st.tilt, workers)
    clock.lap("style")
    if tomo.labels is not None and not done_mask(g, "labels").all():
        with open_mrc(tomo.labels, role="labels") as lab:
            write_volume(g, "labels", lab.read())
    clock.lap("labels")
    model = NoiseModel.from_json(model_json() if callable(model_json) else model_json)
    clock.lap("model")
    prepare_noise(
        sink,
        TiltReader(clean["noiseless"]),
        model,
        tomo.seed,
        ("noisy", "content"),
        content_sigma,
        workers=workers,
        pool=pool,
    )
    clock.lap("noise")
    ranges = {s: [float(x) for x in sink.stack_range(s, workers)] for s in sink.tracked}
    clock.lap("ranges")
    attrs = {**spec_attrs(tomo, angles), "voxel_size": float(voxel), "ranges": ranges}
    if write_attrs:
        g.attrs.update(attrs)
        clock.lap("attrs")
    return {
        "name": tomo.name,
        "n": len(angles),
        "ranges": ranges,
        **({} if write_attrs else {"attrs": attrs}),
        "seconds": clock.laps,
        "cpu_seconds": clock.cpu_laps,
        "ended_at": time.time(),
    }


def _noiseless(sink, tomo: TomogramSpec, angles, workers: int) -> float:
    """The noiseless tilts a tomogram's group still needs, projected from its volume or copied
    from its tilts; returns the source's voxel size."""
    from faket.io import open_mrc
    from faket.pipeline import prepare_noiseless

    source = tomo.volume or tomo.tilts
    assert source is not None  # the spec checked it
    with open_mrc(source, role="volume" if tomo.volume else "tilts", workers=workers) as src:
        voxel = src.voxel_size[0] or 1.0
        if tomo.volume is None:
            prepare_noiseless(sink, angles, tilts=src.tilt, workers=workers)
            return voxel
        import torch  # only to project: importing it takes seconds (2.2 s on this VM)

        threads = torch.get_num_threads()  # Ray reuses this process for other tasks: restore it
        torch.set_num_threads(max(1, workers))
        try:
            prepare_noiseless(sink, angles, volume=src.data, workers=workers)
        finally:
            torch.set_num_threads(threads)
    return voxel


def spec_attrs(tomo: TomogramSpec, angles) -> dict:
    """A tomogram group's attributes that come from its spec alone (no image data): written by
    its prepare task, and refreshed by the driver where that task is skipped (prepared already)."""
    attrs = {
        "angles": [float(a) for a in angles],
        "seed": tomo.seed,
        "dose_per_tilt": tomo.dose_per_tilt,
        "sources": {
            k: str(v)
            for k, v in (
                ("volume", tomo.volume),
                ("tilts", tomo.tilts),
                ("style", tomo.style),
                ("angles", tomo.angles),
            )
            if v is not None
        },
    }
    if tomo.particles is not None:
        attrs["particles_csv"] = tomo.particles.read_text()
    return attrs
