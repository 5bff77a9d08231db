"""Diagnostic: does a local Ray start sooner when its agents' ports are given, not left for the
raylet to read from the files the agents write once they are up?

usage: python benchmarks/diag/ray_agent_ports.py [PAIRS] [--json OUT]

On the H200 host the raylet registered 2.4-3.1 s after it started, just after its runtime
environment and dashboard agents (Python processes) were up (session 24). Ray's raylet waits for
an agent's port file only where the port is 0, so each run here starts a local Ray as the engine
does (``faket_cluster.ray_setup.init_ray``), alternately as it is and with the four agent ports
(metrics agent, metrics export, dashboard agent, runtime environment agent) chosen free
beforehand, in a new process each, and prints ``ray.init``'s seconds and Ray's start timeline
(``bench_core.ray_start_timeline``), then one actor's first call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

ONE_START = r'''
import json, os, socket, sys, time
sys.path[:0] = [sys.argv[2], os.path.join(sys.argv[2], "benchmarks")]
os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0"); os.environ.pop("RAY_ADDRESS", None)
import ray
from ray._private import parameter
if sys.argv[1] == "ports":
    plain = parameter.RayParams.__init__
    def free():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    def with_ports(self, *a, **k):
        plain(self, *a, **k)
        for name in ("metrics_agent_port", "metrics_export_port", "dashboard_agent_listen_port", "runtime_env_agent_port"):
            if not getattr(self, name, None):
                setattr(self, name, free())
    parameter.RayParams.__init__ = with_ports
from bench_core import ray_start_timeline
from cluster.ray_setup import init_ray
t0 = time.time()
init_ray()
t1 = time.time()
@ray.remote(num_cpus=1)
def pid():
    return os.getpid()
ray.get(pid.remote())
t2 = time.time()
line = ray_start_timeline(ray._private.worker.global_worker.node.get_session_dir_path(), t0)
print(json.dumps({"ports": sys.argv[1], "init": round(t1 - t0, 3), "first_task": round(t2 - t0, 3), **line}))
ray.shutdown()
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=int, nargs="?", default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for k in range(2 * args.pairs):
        mode = "given" if k % 2 else "files"
        out = subprocess.run([sys.executable, "-c", ONE_START, "ports" if k % 2 else "files", str(ROOT)],
                             capture_output=True, text=True, timeout=120)
        rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "ports": mode})
        print(json.dumps(rows[-1]), flush=True)
    keys = ("init", "raylet", "raylet_registered", "first_task")
    median = {m: {k: statistics.median(r[k] for r in rows if r["ports"] == m and k in r) for k in keys}
              for m in ("files", "given")}
    print("medians (s):", json.dumps(median), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "median": median}, indent=1) + "\n")


if __name__ == "__main__":
    main()
