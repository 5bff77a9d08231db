"""Arrays a thread uses again tilt after tilt, instead of fresh ones.

A fresh 4096^2 float64 array is 134 MB that the kernel maps and zeroes on first touch. The noise
step of one such tilt made about 470 MB of them (the noise draw, the standardised tilt, the
work array, an output per modality); on this project's 2-core VM the zeroing took 0.2-0.8
CPU-s per tilt beside 0.3 s of numpy work (`perf`: `clear_page_erms` 55% of the CPU time), and
glibc's malloc returns arrays this large to the kernel when they are freed (its mmap threshold
stops at 32 MB), so every tilt paid it again. A :class:`Scratch` keeps one array per name.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class Scratch:
    """Named arrays kept for the next tilt; :meth:`array` gives the one of that name, new only
    where the shape or type changed. Not for several threads at once: one per thread."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` (its values are what the last user left)."""
        a = self._arrays.get(name)
        if a is None or a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
            a = self._arrays[name] = np.empty(shape, dtype)
        return a


_local = threading.local()


def keep_in_this_thread() -> None:
    """From now on :func:`of_this_thread` gives this thread a :class:`Scratch` (a pool
    process that makes tilts all its life)."""
    _local.scratch = Scratch()


def of_this_thread() -> Scratch | None:
    """This thread's :class:`Scratch`, if :func:`keep_in_this_thread` made one."""
    return getattr(_local, "scratch", None)


def per_thread() -> Any:
    """A ``get()`` that gives each calling thread a :class:`Scratch` of its own, for as long as
    the caller keeps it (e.g. one call that makes tilts on several threads)."""
    local = threading.local()

    def get() -> Scratch:
        s = getattr(local, "scratch", None)
        if s is None:
            s = local.scratch = Scratch()
        return s

    return get
