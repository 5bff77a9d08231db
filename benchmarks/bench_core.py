"""Core timings of the library on this machine: NST per tilt, projection, reconstruction.

usage: python benchmarks/bench_core.py [--sizes 128,256] [--tilts 9] [--device cpu]

Writes benchmarks/results/core-<host>-<device>.json with machine info and
prints a table. Weights are `random` (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from faket.io import angles_range
from faket.nst import StyleTransfer, stylize_stack
from faket.projection import project
from faket.reconstruction import reconstruct
from faket.settings import NSTSettings
from faket.weights import random_state_dict


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_nst(size: int, n_tilts: int, device: str, batch_size: int = 1, repeats: int = 2) -> dict:
    rng = np.random.default_rng(0)
    content, style, init = (rng.normal(size=(n_tilts, size, size)).astype(np.float32)
                            for _ in range(3))
    transfer = StyleTransfer(random_state_dict(0), NSTSettings(batch_size=batch_size), device=device)
    stylize_stack(content[:batch_size], [style[:batch_size]], init[:batch_size], transfer)  # warm-up
    best = np.inf
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        stylize_stack(content, [style], init, transfer)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return {"case": "nst", "size": size, "tilts": n_tilts, "batch_size": batch_size,
            "seconds_per_tilt": best / n_tilts, "tilts_per_second": n_tilts / best}


def time_projection_reconstruction(size: int, n_tilts: int, device: str) -> list[dict]:
    vol = np.random.default_rng(1).random((size, size, size), dtype=np.float32)
    theta = angles_range(-60, 60, 120 / (n_tilts - 1))
    _sync(device)
    t = time.perf_counter()
    tilts = project(vol, theta, device=device)
    _sync(device)
    t_proj = time.perf_counter() - t
    t = time.perf_counter()
    reconstruct(tilts, theta, device=device)
    _sync(device)
    t_rec = time.perf_counter() - t
    return [{"case": "projection", "size": size, "tilts": n_tilts, "seconds": t_proj},
            {"case": "reconstruction", "size": size, "tilts": n_tilts, "seconds": t_rec}]


def machine_info(device: str) -> dict:
    info = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--tilts", type=int, default=9)
    ap.add_argument("--volume", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [time_nst(int(s), args.tilts, args.device) for s in args.sizes.split(",")]
    rows += time_projection_reconstruction(args.volume, 61, args.device)
    result = {"machine": machine_info(args.device), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "results": rows}
    out = Path(args.out or Path(__file__).parent / "results" /
               f"core-{args.device.replace(':', '')}-{platform.node()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        if r["case"] == "nst":
            print(f"nst {r['size']}^2: {r['seconds_per_tilt']:.3f} s/tilt "
                  f"({r['tilts_per_second']:.2f} tilts/s)")
        else:
            print(f"{r['case']} {r['tilts']} x {r['size']}^3: {r['seconds']:.2f} s")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
