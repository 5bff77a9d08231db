"""The run store's tilt stacks as a sink of the pipeline's stages (a part of faket.store).

:class:`StoreSink` is one tomogram's group as a ``faket.pipeline.TiltSink``; its
:class:`TiltWriter` and a :class:`TiltReader` pickle as their zarr arrays' metadata, so that
processes of a pool (:mod:`faket._procs`) read and write the tilts themselves.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._flags import set_flags
from ._shards import read_tilt, write_tilt_data


def put_tilt(arr, flags, index: int, image: np.ndarray) -> None:
    """Write one tilt into an opened stack, then set its done flag."""
    write_tilt_data(arr, index, np.asarray(image, dtype=np.float32))
    set_flags(flags, [index])


class TiltWriter:
    """Puts tilts into opened stacks of the run store, in whichever process holds it (see
    :meth:`StoreSink.writer`); a put returns the tilt's float32 (min, max) where its stack is
    in ``track``, else None."""

    def __init__(self, arrays: dict[str, tuple[Any, Any]], track: Sequence[str] = ()) -> None:
        self.arrays = arrays
        self.track = frozenset(track)

    def put(self, name: str, index: int, image: np.ndarray) -> tuple[np.float32, np.float32] | None:
        """Write tilt ``index`` of stack ``name``, then its done flag."""
        tilt = np.asarray(image, dtype=np.float32)
        put_tilt(*self.arrays[name], index, tilt)
        return (tilt.min(), tilt.max()) if name in self.track else None


class TiltReader:
    """``reader(i)``: tilt ``i`` of a run-store stack as float32 ``(H, W)`` (:func:`read_tilt`);
    pickles, so a pool process reads the tilts itself."""

    def __init__(self, arr: Any) -> None:
        self.arr = arr

    def __call__(self, index: int) -> np.ndarray:
        return read_tilt(self.arr, index)


class StoreSink:
    """The run store's group of one tomogram as a ``faket.pipeline.TiltSink``: tilts not
    done yet are to do; a put writes the tilt and then its done flag (idempotent).

    track: stacks whose value range the sink keeps as it writes (see :meth:`stack_range`).
    """

    def __init__(self, group, track: Sequence[str] = ()) -> None:
        self.group = group
        self._extremes: dict[str, dict[int, tuple[np.float32, np.float32]]] = {n: {} for n in track}
        # each stack's (array, done flags), opened once: an open reads and parses its metadata in
        # zarr's one event-loop thread, where the threads putting tilts would queue for it
        self._arrays: dict[str, tuple[Any, Any]] = {}

    @property
    def tracked(self) -> list[str]:
        return list(self._extremes)

    def todo(self, name: str) -> list[int]:
        from .store import done_mask

        return [int(i) for i in np.flatnonzero(~done_mask(self.group, name))]

    def put(self, name: str, index: int, image: np.ndarray) -> None:
        self.note(name, index, self.writer([name]).put(name, index, image))

    def writer(self, names: Sequence[str]) -> TiltWriter:
        """What puts tilts of stacks ``names`` in another process (it pickles: the arrays'
        metadata, not their data); give what its puts return to :meth:`note`."""
        return TiltWriter({n: self._opened(n) for n in names}, self.tracked)

    def note(self, name: str, index: int, extremes: tuple[np.float32, np.float32] | None) -> None:
        """A tilt put (by :meth:`writer`'s put, maybe in another process) and what it returned."""
        if extremes is not None:  # one key per tilt: threads putting tilts never collide
            self._extremes[name][int(index)] = extremes

    def _opened(self, name: str) -> tuple[Any, Any]:
        from .store import _flag_array

        if name not in self._arrays:  # two threads may both open it: the same arrays
            self._arrays[name] = (self.group[name], _flag_array(self.group, name))
        return self._arrays[name]

    def stack_range(self, name: str, workers: int = 1) -> tuple[np.float32, np.float32]:
        """Min and max of a tracked stack: of the tilts put here, as they were put, and of the
        others (written before, e.g. by a run that stopped) read back; what
        ``faket.nst.stack_range`` of the whole stack gives, without reading it again."""
        from ._threads import for_each

        known = self._extremes[name]
        arr = self.group[name]

        def read(i: int) -> None:
            tilt = read_tilt(arr, i)
            known[i] = (tilt.min(), tilt.max())

        for_each(read, [i for i in range(arr.shape[0]) if i not in known], workers)
        lows, highs = zip(*known.values())
        return np.float32(min(lows)), np.float32(max(highs))
