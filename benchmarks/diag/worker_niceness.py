"""A/B (diagnostic): a small engine run (two 32^2 tomograms of 7 tilts, two CPU actors, a local
Ray) beside BUSY busy loops, with Ray's workers at its default niceness (15) and at 0.

usage: python benchmarks/diag/worker_niceness.py BUSY [REPEATS] [--json OUT]

Ray starts its task and actor processes at niceness 15 (``RAY_worker_niceness``), below every
process at the default 0: beside other work on the machine they get almost no CPU. Each run is a
subprocess of its own (its own local Ray), the two settings alternating; prints and writes each
run's seconds and its stage seconds. Results of session 21:
``benchmarks/results/ray-worker-niceness-cpu-vm.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from faket.reproducible import CPU_PIN  # the suite's pinned kernels and thread count

ROOT = Path(__file__).resolve().parents[2]

ONE_RUN = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
import torch
from weights_recipe import test_state_dict
from faket_cluster.demo import write_inputs
from faket_cluster.engine import run
from faket_cluster.spec import load_spec

tmp = Path(sys.argv[1])
weights = tmp / "vgg19_test.pth"
torch.save(test_state_dict(), weights)
spec = write_inputs(tmp / "run", tomograms=2, size=32, angles=(-45.0, 45.0, 15.0))
text = spec.read_text().replace('vgg = "imagenet"', f'vgg = "{weights}"')
spec.write_text(text.replace("batch = 1", 'batch = 1\nactors = 2\ndevice = "cpu"'))
summary = run(load_spec(spec), say=lambda m: None)
print(json.dumps({"seconds": summary["seconds"], "stage_seconds": summary["stage_seconds"]}))
"""


def one_run(niceness: str | None) -> dict:
    """One engine run in a fresh process; Ray's workers at ``niceness`` (None: Ray's default)."""
    env = {**os.environ, **CPU_PIN, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_worker_niceness", None)
    if niceness is not None:
        env["RAY_worker_niceness"] = niceness
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", ONE_RUN, tmp],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("busy", type=int, help="busy loops (processes at niceness 0) beside the runs")
    parser.add_argument("repeats", type=int, nargs="?", default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    runs: list[dict] = []
    try:
        for _ in range(args.repeats):
            for niceness in (None, "0"):
                t0 = time.perf_counter()
                result = one_run(niceness)
                row = {
                    "worker_niceness": "15 (Ray's default)" if niceness is None else niceness,
                    "process_seconds": round(time.perf_counter() - t0, 2),
                    **result,
                }
                print(json.dumps(row), flush=True)
                runs.append(row)
    finally:
        for p in loops:  # only the loops this script started
            p.kill()
            p.wait()
    if args.json:
        args.json.write_text(
            json.dumps({"busy_loops": args.busy, "cpus": os.cpu_count(), "runs": runs}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
