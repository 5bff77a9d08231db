"""Diagnostic: would a Ray worker import torch sooner if a thread began the import as its process
starts, beside Ray's own start-up of the worker (a ``sitecustomize`` on the worker's path)?

usage: python benchmarks/diag/worker_preload.py [PAIRS] [--json OUT]

The engine's GPU actor spends most of its start importing torch after Ray's worker has booted
(session 24, H200: the boot 1.9-2.4 s, the constructor 4.1-4.7 s). Here a local Ray starts
PAIRS (default 4) pairs of actors, alternately plain and with the thread, each in a new process;
each actor reports the seconds from its process's start to its constructor (``boot``), the
constructor's torch import (``torch``) and the sum (``ready``). Python's lock is held by an
import for most of its time, so the thread may slow the boot more than it gains.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_core

PRELOAD = '''import os, threading, time
os.environ["FAKET_DIAG_PRELOAD_AT"] = str(time.time())
threading.Thread(target=lambda: __import__("torch"), daemon=True, name="preload").start()
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=int, nargs="?", default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)
    import ray

    from cluster._clock import process_started_at
    from cluster.ray_setup import init_ray

    site = Path(tempfile.mkdtemp(prefix="faket-preload-"))
    (site / "sitecustomize.py").write_text(PRELOAD)

    @ray.remote(num_cpus=0.5)
    class Probe:
        def __init__(self) -> None:
            self.entered = time.time()
            import torch  # noqa: F401

            self.imported = time.time()
            self.began = process_started_at()

        def report(self) -> dict:
            return {
                "boot": round(self.entered - self.began, 3),
                "torch": round(self.imported - self.entered, 3),
                "ready": round(self.imported - self.began, 3),
                "thread": "FAKET_DIAG_PRELOAD_AT" in os.environ,
            }

    rows: list[dict] = []
    try:
        init_ray()
        path = os.pathsep.join([str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        for k in range(2 * args.pairs):
            options = {"runtime_env": {"env_vars": {"PYTHONPATH": path}}} if k % 2 else {}
            probe = Probe.options(**options).remote()  # type: ignore[attr-defined]
            rows.append(ray.get(probe.report.remote()))
            print(json.dumps(rows[-1]), flush=True)
            ray.kill(probe)
            time.sleep(1.0)
    finally:
        shutil.rmtree(site, ignore_errors=True)
        if ray.is_initialized():
            ray.shutdown()
    summary = {
        key: {
            "plain": statistics.median(r[key] for r in rows if not r["thread"]),
            "thread": statistics.median(r[key] for r in rows if r["thread"]),
        }
        for key in ("boot", "torch", "ready")
    }
    print("medians (s):", json.dumps(summary), flush=True)
    if args.json:
        from bench_core import machine_info

        out = {"rows": rows, "median": summary, "machine": machine_info("cpu")}
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
