"""Engine scaling on the demo data: tilts per second with 1, 2, ... CPU actors, against a plain loop.

usage: python benchmarks/bench_engine.py [--actors 1,2] [--share-style 1,8] [--size 64] [--tomograms 2]

Each actor count and share_style setting runs the same spec into a fresh
store (Ray started once per run); all demo tomograms share one style stack,
so share_style > 1 computes each style tilt's Gram targets once per task
instead of once per tomogram. The plain loop stylises the same tilts in this
process with faket.nst.stylize_stack (2 threads; actors have 1 CPU each).
Writes benchmarks/results/engine-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--share-style", default="1,8")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--tomograms", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from bench_core import machine_info

    from faket_cluster.demo import write_inputs
    from faket_cluster.engine import run
    from faket_cluster.spec import load_spec
    from faket.nst import StyleTransfer, stylize_stack
    from faket.store import open_store
    from faket.weights import random_state_dict

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec_path = write_inputs(tmp, args.tomograms, args.size)
        text = spec_path.read_text().replace('vgg = "imagenet"', 'vgg = "random"')
        text = text.replace('export = "mrc"\n', "").replace("[reconstruction]", "[unused]")
        text = text.replace('[unused]\nfilter = "ramp"\nz_range = [0.25, 0.75]\n', "")
        first = None
        for n in [int(a) for a in args.actors.split(",")]:
            for share in [int(a) for a in args.share_style.split(",")]:
                p = tmp / f"spec{n}_{share}.toml"
                p.write_text(text.replace('store = "run.zarr"', f'store = "run{n}_{share}.zarr"')
                             .replace("[resources]", f"[resources]\nshare_style = {share}"))
                summary = run(load_spec(p), actors=n, say=lambda m: None)
                ray.shutdown()
                first = first or tmp / f"run{n}_{share}.zarr"
                rows.append({"actors": n, "share_style": share, "tilts": summary["tilts"],
                             "style_gram_tilts": summary["style_gram_tilts"],
                             "prefetched_tasks": summary["prefetched_tasks"],
                             "input_read_seconds": summary["input_read_seconds"],
                             "input_wait_seconds": summary["input_wait_seconds"],
                             "nst_seconds": summary["nst_seconds"],
                             "tilts_per_second": summary["tilts_per_second"],
                             "run_seconds": summary["seconds"]})
                print(json.dumps(rows[-1]), flush=True)
        root = open_store(first, mode="r")
        transfer = StyleTransfer(random_state_dict(0))
        t = time.perf_counter()
        total = 0
        for name in sorted(n for n, _ in root.groups()):
            g = root[name]
            c, i, s = (np.asarray(g[k][:]) for k in ("content", "noisy", "style"))
            stylize_stack(c, [s], i, transfer)
            total += len(c)
        loop = time.perf_counter() - t
        rows.append({"plain_loop": True, "tilts": total, "seconds": loop, "tilts_per_second": total / loop})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(__file__).parent / "results" / f"engine-{platform.node()}.json"
    out.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "size": args.size,
                               "tomograms": args.tomograms, "machine": machine_info("cpu"),
                               "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
