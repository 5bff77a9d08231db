"""k actors on k GPUs against one: the engine's scaling, simulated on a CPU machine.

usage: python benchmarks/engine_scaling.py [--actors 1,2,4] [--size 128] [--tilts 48]
                                           [--kernel-seconds 0.25] [--json OUT]

Ray is told the machine has k GPUs (``num_gpus=k``, its custom resource accounting is
real), so the engine starts one actor per GPU. Each actor's NST is replaced by a kernel
that sleeps ``--kernel-seconds`` per tilt and returns NOISY (``FAKET_ENGINE_KERNEL=sleep:S``):
a stand-in for a GPU's compute, which holds no CPU. What is measured is therefore whether
the driver, the scheduling and the store keep k such devices busy: ``scaling[k]`` is the
NST stage's throughput with k actors over one actor's (target >= 0.9 k).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def measure(k: int, size: int, tilts: int) -> dict:
    import ray

    from engine_feed import write_inputs
    from faket_cluster.engine import init_ray, run
    from faket_cluster.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        spec_path = write_inputs(Path(tmp), size, tilts)
        text = spec_path.read_text().replace("actors = 1\n", "")  # one actor per declared GPU
        spec_path.write_text(text)
        init_ray(num_cpus=k + 1, num_gpus=k)
        try:
            summary = run(load_spec(spec_path), say=lambda m: print(m, file=sys.stderr))
        finally:
            ray.shutdown()
    assert summary["actors"] == k and summary["gpu"], summary
    return {"actors": k, "tilts_per_second": summary["tilts_per_second"], "nst_seconds": summary["nst_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actors", default="1,2,4")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--tilts", type=int, default=48)
    ap.add_argument("--kernel-seconds", type=float, default=0.25)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["FAKET_ENGINE_KERNEL"] = f"sleep:{args.kernel_seconds}"  # the local Ray's workers inherit it
    from bench_core import emit, machine_info

    rows = [measure(int(k), args.size, args.tilts) for k in args.actors.split(",")]
    one = rows[0]["tilts_per_second"]
    result = {
        "size": args.size,
        "tilts": args.tilts,
        "kernel_seconds_per_tilt": args.kernel_seconds,
        "ideal_tilts_per_second_per_actor": 1 / args.kernel_seconds,
        "rows": rows,
        "scaling": {str(r["actors"]): r["tilts_per_second"] / one for r in rows},
        "scaling_over_k": {str(r["actors"]): r["tilts_per_second"] / one / r["actors"] for r in rows},
        "machine": machine_info("cpu"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
