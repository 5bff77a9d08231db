"""Style Gram targets made ahead, while a GPU actor waits for its first tomogram's prepare stage.

An actor is often up before the stacks it will style are prepared (the NST scales each stack
by its whole range, known only once every tilt's noise is made). The style Gram targets need
only the style stack: about a quarter of a tilt's NST work (0.26 of a 512^2 tilt's on a 2-core
VM, a forward pass to the deepest style layer beside a forward and backward one). The actor
makes them in that wait from the style file itself, batch by batch as its tasks will ask for
them, and stops at its first task: a task then takes the targets of its batches that are
made, and makes the others as before. The same arithmetic on the same values (the file's
float32 tilts, which the prepare stage copies into the store losslessly, scaled by the same
range), so the same targets bit for bit; a batch whose style range is not the one they were
made with is made again, and targets of tilts that a task cut otherwise than planned asks for
are dropped (they would hold device memory for nothing).

On a GPU host whose local Ray this run starts, the GPU is idle for the seconds Ray and the actor
take to start: the driver makes the targets there meanwhile (:func:`made_beside_start`, the
same arithmetic on the same device kind) and hands them to the actor (:meth:`StyleAhead.adopt`),
which makes only those still missing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

#: Tilts whose targets an actor makes ahead at most (about 2.4 MB each at one scale).
MOST_TILTS = 256


class StyleAhead:
    """The targets an actor made ahead, keyed by (store, style holder, the batch's tilts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = threading.Lock()  # held while targets are made
        self._stop = threading.Event()
        self._made: dict[tuple, tuple[tuple, Any]] = {}
        self.tilts = 0  # tilts whose targets were made ahead
        self.seconds = 0.0
        self.span: dict[str, float] = {}  # wall clock: ahead_from, ahead_to (the run's timeline)
        self.adopted = 0  # tilts whose targets came made (adopt)

    def make(
        self,
        transfer: Any,
        device: str,
        key: tuple[str, str],
        style_path: str,
        size: tuple[int, int],
        tasks: list[list[int]],
    ) -> None:
        """The targets of each NST batch of each task's tilts (``tasks``, in the order the tasks
        will come), for content images of ``size``, until :meth:`stop` or :data:`MOST_TILTS`.
        key: (store, the group holding the style stack)."""
        from faket.io import open_mrc
        from faket.nst import nst_batches, stack_range, to_unit, upload

        with self._running:
            t0 = time.perf_counter()
            self.span["ahead_from"] = time.time()
            try:
                # the range on threads (the prepare stage checks the file for NaN and Inf)
                with open_mrc(style_path, role="style", check_finite=False) as st:
                    lo, hi = stack_range(st.data)
                    for tilts in tasks:
                        for b in nst_batches(len(tilts), transfer.settings.batch_size):
                            idx = tuple(int(i) for i in tilts[b])
                            if (*key, idx) in self._made:  # adopted: made in the driver
                                continue
                            if self._stop.is_set() or self._held() + len(idx) > MOST_TILTS:
                                return
                            raw = np.stack([st.tilt(i) for i in idx])
                            unit = to_unit(upload({"style": raw}, device).ready()["style"], lo, hi)
                            made = transfer.style_targets([unit], size)
                            with self._lock:
                                self._made[(*key, idx)] = ((lo, hi), made)
                            self.tilts += len(idx)
            finally:
                if device == "cuda":  # the GPU's work in the seconds, not only its launches
                    import torch

                    torch.cuda.synchronize()
                self.seconds += time.perf_counter() - t0
                self.span["ahead_to"] = time.time()

    def _held(self) -> int:
        with self._lock:
            return sum(len(k[2]) for k in self._made)

    def export(self) -> dict:
        """The targets made here, copied to the host: what :meth:`adopt` takes in another process."""
        with self._lock:
            made = list(self._made.items())
        return {k: (rng, _to(targets, "cpu")) for k, (rng, targets) in made}

    def adopt(self, made: dict, device: str) -> None:
        """Keep targets made elsewhere (:meth:`export`'s) on ``device``, as if made here, for
        the batches that have none yet."""
        for k, (rng, targets) in made.items():
            on = _to(targets, device)
            with self._lock:
                if k not in self._made:
                    self._made[k] = (rng, on)
                    self.adopted += len(k[2])

    def stop(self) -> None:
        """No more targets made ahead; returns once the batch in hand is made."""
        self._stop.set()
        with self._running:
            pass

    def targets(
        self, transfer: Any, store: str, data: dict, idx: list[int], batches: list
    ) -> tuple[list, int]:
        """Each NST batch's style Gram targets for a task's inputs ``data`` (see
        ``NSTWorker._read``), taken from those made ahead or made now, and how many tilts' were
        made ahead: what an in-process run of the same batches makes."""
        from faket.nst import to_unit

        style_range = tuple(map(np.float32, data["style_range"]))
        key = (store, data["style_holder"])
        targets = [self.take(key, tuple(idx[b]), style_range) for b in batches]
        ahead = sum(len(idx[b]) for b, t in zip(batches, targets) if t is not None)
        if ahead < len(idx):  # tasks cut otherwise than planned: what holds these tilts goes unused
            with self._lock:
                for stale in [m for m in self._made if m[:2] == key and set(m[2]) & set(idx)]:
                    del self._made[stale]
        unit_style = None
        for k, b in enumerate(batches):
            if targets[k] is None:
                if unit_style is None:
                    unit_style = to_unit(data["style"], *style_range)
                targets[k] = transfer.style_targets([unit_style[b]], data["size"])
        return targets, ahead

    def take(self, key: tuple[str, str], tilts: tuple[int, ...], style_range: tuple) -> Any | None:
        """The targets made ahead for these tilts of this style holder, scaled by ``style_range``
        (float32 min, max); None where there are none."""
        with self._lock:
            entry = self._made.pop((*key, tilts), None)
        if entry is None or entry[0] != tuple(style_range):
            return None
        return entry[1]


def _to(targets: dict, device: str) -> dict:
    """Gram targets ``{scale: {layer: tensor}}`` on ``device``, values and dtype kept."""
    return {s: {layer: t.to(device) for layer, t in by_layer.items()} for s, by_layer in targets.items()}


def made_beside_start(
    state_dict: dict,
    settings: Any,
    device: str,
    threads: int,
    key: tuple[str, str],
    style_path: str,
    size: tuple[int, int],
    tasks: list[list[int]],
) -> dict:
    """The style targets of ``tasks``' NST batches (see :meth:`StyleAhead.make`), made here with
    the actors' weights and ``settings`` on ``device`` while Ray and the actors start; on the
    host, for :meth:`StyleAhead.adopt`. threads: on the CPU, the actors' torch threads (the
    count changes the convolutions' round-off); the driver's count is restored after."""
    import torch

    from faket.nst import StyleTransfer
    from faket.reproducible import PIN_THREADS, requested

    before = torch.get_num_threads()
    if device == "cpu":  # as the actor counts them (NSTWorker's constructor)
        torch.set_num_threads(PIN_THREADS if requested() else max(1, threads))
    ahead, transfer = StyleAhead(), None
    try:
        transfer = StyleTransfer(state_dict, settings, device=device)
        ahead.make(transfer, device, key, style_path, size, tasks)
        return ahead.export()
    finally:
        ahead._made.clear()
        transfer = None  # noqa: F841  (its weights too)
        torch.set_num_threads(before)
        if device == "cuda":  # the actor's NST needs the device's memory: none kept here
            torch.cuda.empty_cache()
