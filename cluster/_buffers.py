"""The actor's inputs: a task's tilts read from the store, decoded straight into buffers used
again task after task."""

from __future__ import annotations

import threading

import numpy as np


def read_tilts(arr, tilts: list[int], take) -> np.ndarray:
    """Tilts of a stack ``(len(tilts), H, W)``, each decoded straight into its place in a buffer
    from ``take(shape)``."""
    from faket.store import read_tilt

    out = take((len(tilts), *arr.shape[1:]))
    for k, i in enumerate(tilts):
        read_tilt(arr, i, out=out[k])
    return out


def read_inputs(root, names: list[str], tilts: list[int], readers, take, ranges: dict | None = None) -> dict:
    """A task's inputs from the store ``root``: style tilts once, content and start per tomogram
    (the stacks read side by side on the ``readers`` pool: reading and decoding run without
    Python's lock, into buffers from ``take``), the stacks' ranges (``ranges``, where the task
    carries them: ``{"style": [min, max], "members": {name: {"content": ..., "noisy": ...}}}``;
    else read from the groups' attributes), the group holding the style stack, and whether each
    tomogram's tilts are all done already (a retry: it is skipped)."""
    from faket.store import done_mask, holder

    first = root[names[0]]
    styles = holder(root, first, "style")  # the members share it (see schedule.nst_jobs)
    stacks = {("style", ""): readers.submit(read_tilts, styles["style"], tilts, take)}
    for name in names:
        for key in ("content", "noisy"):
            stacks[(key, name)] = readers.submit(read_tilts, root[name][key], tilts, take)
    data = {
        "style": stacks[("style", "")].result(),
        "style_range": ranges["style"] if ranges else styles.attrs["ranges"]["style"],
        "style_holder": styles.path,
        "size": first["content"].shape[-2:],
        "members": {},
        "done": {name: bool(done_mask(root[name], "faket", tilts).all()) for name in names},
    }
    for name in names:
        data["members"][name] = {
            "ranges": ranges["members"][name] if ranges else root[name].attrs["ranges"],
            "content": stacks[("content", name)].result(),
            "noisy": stacks[("noisy", name)].result(),
        }
    return data


class Buffers:
    """Input buffers used again task after task: a fresh array of a 4096^2 tilt costs its
    page faults each time (tens of ms, more than the read itself on a VM), a used one none."""

    def __init__(self, keep: int = 24) -> None:
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self._keep = keep  # buffers kept at most: an actor holds ``in_flight`` tasks' inputs at once

    def take(self, shape: tuple) -> np.ndarray:
        with self._lock:
            free = self._free.get(tuple(shape))
            if free:
                return free.pop()
        return np.empty(shape, np.float32)

    def give(self, arrays: list) -> None:
        """Arrays no one uses any longer (host float32 arrays only; anything else is left alone)."""
        with self._lock:
            kept = sum(map(len, self._free.values()))
            for a in arrays:
                if (
                    kept < self._keep
                    and isinstance(a, np.ndarray)
                    and a.flags.owndata
                    and a.dtype == np.float32
                ):
                    self._free.setdefault(a.shape, []).append(a)
                    kept += 1
