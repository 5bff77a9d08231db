"""Exact tiling: peak memory, time and deviation against untiled, per memory budget.

usage: python benchmarks/bench_tiling.py [--device cpu|cuda] [--sizes 1024x1024] [--budgets none,2,1]

Each (size, budget) runs one tilt at the published settings in its own process,
so that its peak memory is its own: the process's RSS high-water mark during
the tilt on the CPU (weights and inputs included), ``torch.cuda.max_memory_allocated``
on a GPU.
Outputs are compared with the untiled result of the same size (max and 99.9th
percentile of |difference|; tilts have values in [0, 1] before the final
match to the reference's statistics, which is skipped here).
With 'exact' among the budgets (CPU default) every float32 result is also
compared with the untiled float64 one: how far tiled float32 is from the exact
answer, next to how far untiled float32 is. Defaults: CPU 1024^2 with budgets
none, exact, 2, 1 GB; GPU 4096^2 and 4092 x 5760 with budgets none, 16, 8 GB. Writes benchmarks/results/tiling-<device>-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(device: str, h: int, w: int, budget: str, out: str) -> None:
    """Child process: stylise one h x w tilt, print a JSON row, save the result to ``out``."""
    import numpy as np
    import torch

    from bench_core import peak_memory_mb, reset_peak_memory, sync
    from faket.nst import StyleTransfer
    from faket.settings import NSTSettings
    from faket.weights import random_state_dict

    rng = np.random.default_rng(0)
    c, s, i = (rng.random((1, h, w), dtype=np.float32) for _ in range(3))
    dtype = torch.float64 if budget == "exact" else torch.float32
    budget = None if budget in ("none", "exact") else float(budget)
    transfer = StyleTransfer(random_state_dict(0), NSTSettings(memory_budget_gb=budget), device=device,
                             dtype=dtype)
    tiles = transfer._tiles(h, w, 1)
    sync(device)
    reset_peak_memory(device)
    t = time.perf_counter()
    res = transfer.stylize_batch(c, [s], i).images.cpu().numpy()
    seconds = time.perf_counter() - t
    peak = peak_memory_mb(device)
    row = {"height": h, "width": w, "budget_gb": budget, "dtype": str(dtype).split(".")[1],
           "seconds": seconds,
           "tiles": len(tiles) if tiles else 1,
           "tile_edge": (tiles[0][0][1] - tiles[0][0][0]) if tiles else None}
    row["peak_gpu_mb" if device.startswith("cuda") else "peak_rss_mb"] = peak
    np.save(out, res)
    print(json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--sizes", default=None, help="e.g. 1024x1024,2048x2048 (height x width)")
    ap.add_argument("--budgets", default=None,
                    help="GB per step; 'none' = untiled, 'exact' = untiled in float64 (reference)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        device, h, w, budget, out = args.child
        one(device, int(h), int(w), budget, out)
        return
    import numpy as np
    import torch

    from bench_core import machine_info

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    sizes = args.sizes or ("4096x4096,4092x5760" if gpu else "1024x1024")
    budgets = (args.budgets or ("none,16,8" if gpu else "none,exact,2,1")).split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes.split(","):
            h, w = (int(v) for v in size.split("x"))
            ref = exact = None
            results: dict = {}
            for b in budgets:
                out = str(Path(tmp) / f"{h}x{w}-{b}.npy")
                proc = subprocess.run([sys.executable, __file__, "--child", device, str(h), str(w), b, out],
                                      capture_output=True, text=True, cwd=HERE)
                if proc.returncode:
                    rows.append({"height": h, "width": w, "budget_gb": b, "error":
                                 (proc.stderr.strip().splitlines() or ["?"])[-1]})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                res = np.load(out)
                if b == "none":
                    ref = res
                elif b == "exact":
                    exact = res
                elif ref is not None:
                    d = np.abs(res - ref)
                    row.update(max_abs_vs_untiled=float(d.max()),
                               p999_abs_vs_untiled=float(np.quantile(d, 0.999)))
                rows.append(row)
                results[len(rows) - 1] = res
                print(json.dumps(row), flush=True)
            if exact is not None:                 # float32 runs, tiled or not, against float64
                for k, res in results.items():
                    if rows[k].get("dtype") == "float32":
                        d = np.abs(res - exact)
                        rows[k].update(max_abs_vs_float64=float(d.max()),
                                       p999_abs_vs_float64=float(np.quantile(d, 0.999)))
                print(json.dumps([{k: r.get(k) for k in ("budget_gb", "max_abs_vs_float64",
                                                          "p999_abs_vs_float64")} for r in rows]))
    name = f"tiling-{device.replace(':', '')}-{platform.node()}.json"
    path = HERE / "results" / name
    path.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "machine": machine_info(device), "results": rows}, indent=1) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
