"""A/B (diagnostic): the prepare stage's noise phase into a run store, with the sink opening each
stack and its done flags once (new, ``faket.store.StoreSink``) or once per tilt written (old).

usage: python benchmarks/diag/sink_opens.py TILTS SIZE REPEATS THREADS

Runs alternate old and new in one process on the same store; prints each run's seconds and the
best of each. Results of session 20: ``benchmarks/results/sink-opens-once-cpu-vm.json``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time

import numpy as np

from faket.noise import NoiseModel
from faket.pipeline import prepare_noise
from faket.store import StoreSink, create_stack, open_store, read_tilt, reset_done, write_tilt


class OldSink(StoreSink):
    """The sink as it was: every put opens the stack and its flags again (``write_tilt``)."""

    def put(self, name: str, index: int, image: np.ndarray) -> None:
        tilt = np.asarray(image, dtype=np.float32)
        write_tilt(self.group, name, index, tilt)
        if name in self._extremes:
            self._extremes[name][int(index)] = (tilt.min(), tilt.max())


def main(n: int, size: int, repeats: int, workers: int) -> None:
    rng = np.random.default_rng(0)
    small = rng.random((n, 64, 64)).astype(np.float32)
    model = NoiseModel.estimate([(small + rng.normal(0, 0.3, small.shape).astype(np.float32), small)], 2)
    folder = tempfile.mkdtemp()
    try:
        g = open_store(folder + "/s.zarr").create_group("t")
        for name in ("noiseless", "noisy", "content"):
            create_stack(g, name, (n, size, size))
        for i in range(n):
            write_tilt(g, "noiseless", i, rng.random((size, size), dtype=np.float32))
        noiseless = g["noiseless"]
        seconds: dict[str, list[float]] = {"old": [], "new": []}
        for k in range(repeats):
            for which, cls in (("old", OldSink), ("new", StoreSink)):
                for name in ("noisy", "content"):
                    reset_done(g, name)
                sink = cls(g, track=("content", "noisy"))
                t0 = time.perf_counter()
                prepare_noise(
                    sink,
                    lambda i: read_tilt(noiseless, i),
                    model,
                    1,
                    ("noisy", "content"),
                    0.25,
                    workers=workers,
                )
                seconds[which].append(round(time.perf_counter() - t0, 3))
                print(which, k, seconds[which][-1], flush=True)
        print({w: min(s) for w, s in seconds.items()}, seconds)
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:5]))
