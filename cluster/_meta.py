"""The tomogram groups' attributes the driver writes beside the NST, and the stacks' value ranges
it sends with the NST tasks.

A tomogram's prepare ends by recording its stacks' value ranges (and its spec's attributes) in
its group. At the end of a 61 x 4096^2 prepare that one small write took 0.05-3.2 s on the H200
host, with no CPU (session 24; why is not measured), and the NST waited for it and for the NGFF
metadata written after it.
The tomogram the driver prepares beside Ray's start hands its attributes here instead: they are
written in a thread while its NST runs, and its NST tasks carry the ranges, so the actors do not
read them from the store. Tasks of tomograms whose ranges the driver does not hold (prepared by
an earlier run) carry none, and the actors read them from the store as before.
"""

from __future__ import annotations

import concurrent.futures
import time
from concurrent.futures import Future

from faket._threads import beside
from faket.ngff import class_names, describe_tomogram

from ._hooks import attrs_hook


class GroupAttributes:
    """The driver's tomogram group attributes: written now, or beside the NST for a tomogram
    prepared in the driver (:meth:`write_later`); and each tomogram's stacks' value ranges, as
    its prepare reported them.

    held_by: tomogram -> {shared stack: the tomogram whose group holds it}, for those held by
    another (:func:`faket_cluster.layout.holders`, as the layout recorded them).
    """

    def __init__(self, root, held_by: dict[str, dict[str, str]]) -> None:
        self.root = root
        self.held_by = held_by
        self.style_holders = {n: by.get("style", n) for n, by in held_by.items()}
        self.ranges: dict[str, dict[str, list[float]]] = {}
        self._later: dict[str, Future[dict]] = {}

    @classmethod
    def of(cls, root, names: list[str]) -> GroupAttributes:
        """For the tomograms ``names`` of a laid-out store (their shared stacks' holders read from it)."""
        return cls(root, {n: root[n].attrs.get("held_by", {}) for n in names})

    def learn(self, name: str, result: dict) -> None:
        """The value ranges of a prepare result (:func:`faket_cluster.tasks.prepare_tomogram`)."""
        if isinstance(result, dict) and "ranges" in result:
            self.ranges[name] = result["ranges"]

    def write_later(self, name: str, attrs: dict) -> None:
        """Write a tomogram's attributes (with its ``ranges``) and then its NGFF metadata in a
        thread of the driver, started now."""
        self.learn(name, attrs)
        self._later[name] = beside(lambda: self._write(name, attrs), f"faket-attrs-{name}")

    def _write(self, name: str, attrs: dict) -> dict:
        from faket.store import done_mask

        g = self.root[name]
        attrs_hook(name, lambda: bool(done_mask(g, "faket").any()))
        t0, cpu0 = time.perf_counter(), time.thread_time()
        g.attrs.update(attrs)
        phase = {
            "seconds": {"attrs": time.perf_counter() - t0},
            "cpu_seconds": {"attrs": time.thread_time() - cpu0},
        }
        describe_tomogram(g, class_names(attrs.get("particles_csv")))
        return {**phase, "ended_at": time.time()}

    def refresh(self, name: str, attrs: dict) -> None:
        """A tomogram's spec attributes written now, unless they are written beside the NST."""
        if name not in self._later:
            self.root[name].attrs.update(attrs)

    def describe(self, name: str) -> None:
        """A tomogram's NGFF metadata written now (see :func:`faket.ngff.describe_tomogram`),
        unless it is written beside the NST."""
        if name not in self._later:
            g = self.root[name]
            describe_tomogram(g, class_names(g.attrs.get("particles_csv")))

    def for_task(self, names: tuple[str, ...] | list[str]) -> dict | None:
        """The value ranges an NST task of ``names`` (sharing a style stack) needs:
        ``{"style": [min, max], "members": {name: {"content": ..., "noisy": ...}}}``; None
        where the driver does not hold them all (the actor reads them from the store)."""
        holder = self.style_holders.get(names[0], names[0])
        style = self.ranges.get(holder, {}).get("style")
        if style is None or any(n not in self.ranges for n in names):
            return None
        return {"style": style, "members": {n: self.ranges[n] for n in names}}

    def wait(self, limit_s: float | None = None) -> tuple[dict[str, str], list[dict]]:
        """Wait for the writes beside the NST. Returns (the tomograms whose write failed, with
        why; each other write's ``attrs`` phase in wall and CPU seconds, as a prepare result
        holds them for :func:`faket_cluster.stages.sum_phases`, and when it ended, wall clock:
        ``ended_at``)."""
        concurrent.futures.wait(list(self._later.values()), timeout=limit_s)
        failed: dict[str, str] = {}
        written: list[dict] = []
        for name, future in self._later.items():
            if not future.done():
                failed[name] = "its attributes were still being written when the run ended"
            elif future.exception() is not None:
                err = future.exception()
                failed[name] = f"its attributes could not be written ({type(err).__name__}: {err})"
            else:
                written.append(future.result())
        return failed, written
