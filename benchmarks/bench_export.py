"""Store -> MRC export: a plain per-tilt loop against dask (`da.store` into a memmap).

usage: python benchmarks/bench_export.py [--tilts 24] [--size 1024]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from faket.export import export_stack
from faket.store import create_stack, open_store, write_tilt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tilts", type=int, default=24)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    import dask.array as da
    import mrcfile

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = open_store(tmp / "s.zarr", mode="w")
        g = root.require_group("t")
        shape = (args.tilts, args.size, args.size)
        create_stack(g, "faket", shape)
        rng = np.random.default_rng(0)
        for i in range(args.tilts):
            write_tilt(g, "faket", i, rng.normal(size=shape[1:]).astype(np.float32))
        t = time.perf_counter()
        export_stack(g["faket"], tmp / "loop.mrc")
        t_loop = time.perf_counter() - t
        t = time.perf_counter()
        with mrcfile.new_mmap(tmp / "dask.mrc", shape=shape, mrc_mode=2, overwrite=True) as m:
            da.store(da.from_zarr(g["faket"]), m.data, lock=False)
        t_dask = time.perf_counter() - t
    gb = np.prod(shape) * 4 / 2**30
    result = {"tilts": args.tilts, "size": args.size, "gb": gb, "loop_seconds": t_loop,
              "dask_seconds": t_dask}
    print(json.dumps(result))
    out = Path(__file__).parent / "results" / "export.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
