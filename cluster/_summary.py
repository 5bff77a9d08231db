"""The run summary's parts that the driver gathers from its clocks and the actors' reports: the
phases' wall and CPU seconds, what the actors computed with and how, and the run's timeline."""

from __future__ import annotations

import json
from typing import Iterable

from ._clock import actor_timeline


def _distinct(records: Iterable[dict]) -> list[dict]:
    """The distinct dicts of an iterable, in first-seen order (actors' compute records)."""
    seen: dict[str, dict] = {}
    for r in records:
        seen.setdefault(json.dumps(r, sort_keys=True), r)
    return list(seen.values())


def phase_summary(start: dict, noise: dict, prepare: dict) -> dict:
    """The summary's ``phase_seconds``: inside the start, the noise estimate and the prepare
    tasks (summed over tomograms); and ``phase_cpu_seconds``: the CPU seconds of the processes the
    last two ran in, all their threads (the driver's, beside Ray's start, with whatever else it
    ran meanwhile), against those wall seconds."""
    return {
        "phase_seconds": {"start": start, "noise_model": noise["seconds"], "prepare": prepare["seconds"]},
        "phase_cpu_seconds": {"noise_model": noise["cpu_seconds"], "prepare": prepare["cpu_seconds"]},
    }


def stats_summary(stats) -> dict:
    """What the actors reported: input timing, where they ran and with what arithmetic."""
    meta = stats.rows
    return {
        "style_gram_tilts": stats.style_tilts,
        # of them, tilts whose style Gram targets an early GPU actor made while it waited for
        # the prepare stage (cluster/_ahead.py); the style_ahead seconds are in its warm-up
        "style_gram_tilts_ahead": stats.style_tilts_ahead,
        "input_wait_seconds": stats.input_wait,
        "input_read_seconds": stats.input_read,
        "compute_seconds": stats.compute,
        # per actor (pid): its set-up ("init": torch imported), the warm-up's imports, VGG-19
        # loaded ("model") and on a GPU one small NST ("first_nst"), as its first task reported
        "actor_warm_up_seconds": stats.warm_ups,
        "nst_tasks": stats.tasks,
        "prefetched_tasks": stats.prefetched,
        "workers": sorted({m["pid"] for m in meta}),
        "nodes": sorted({m["node"] for m in meta}),
        "gpu_ids": sorted({g for m in meta for g in m["gpu_ids"]}),
        "devices": sorted({m["device"] for m in meta}),
        "compute": _distinct(m["compute"] for m in meta),
        "tiled_tilts": sum(1 for m in meta if m.get("tile_size")),
    }


def timeline(began: float, stats, early_prep, targets, attrs_ended: list[float] | None = None) -> dict:
    """Seconds after the run began, on the host's wall clock: when the first tomogram's prepare
    beside Ray's start ended (``prepared_beside_start``) and its attributes were written beside
    the NST (``attrs_written``, from ``attrs_ended``: wall clock), when the driver
    made style targets (``driver_targets``: from, to) and each actor's start and first task
    (:func:`faket_cluster._clock.actor_timeline`; an actor on another host has its own clock)."""
    out: dict = {}
    if early_prep is not None and early_prep[1].exception() is None:
        out["prepared_beside_start"] = round(early_prep[1].result()["ended_at"] - began, 2)
    if attrs_ended:
        out["attrs_written"] = round(max(attrs_ended) - began, 2)
    if targets is not None and targets.done() and targets.exception() is None:
        out["driver_targets"] = [round(t - began, 2) for t in targets.result()["span"]]
    starts = zip(stats.warm_ups, stats.warm_up_at)
    out["actors"] = [actor_timeline(began, laps, at) for laps, at in starts if at]
    return out


def made_tilts(targets) -> int:
    """Tilts whose style targets :func:`faket_cluster._ahead_plan.style_targets_beside_start` made (0: none,
    or it failed)."""
    if targets is None or not targets.done() or targets.exception() is not None:
        return 0
    return sum(len(key[2]) for key in targets.result()["made"])
