"""Diagnostic: where Ray puts two actors asked to spread right after a task ended on each node,
with and without waiting for Ray to give those tasks' CPUs back.

usage: python benchmarks/diag/spread_probe.py [PAIRS] [--json OUT]

A two-node cluster on this machine (head 2 CPUs, a worker 1 CPU; ``ray.cluster_utils.Cluster``).
Each round runs a 1-CPU task on each node, then asks for two 1-CPU actors with
``scheduling_strategy="SPREAD"``, alternately at once and after
``faket_cluster.fleet.settled_cpus`` (what ``start_actors`` does for ``spread = true``), and
records on how many nodes they started (2: spread).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=int, nargs="?", default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from cluster.fleet import settled_cpus

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": 150 * 2**20, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20)
    nodes_used: dict[str, list[int]] = {"at_once": [], "settled": []}
    try:
        ray.init(address=cluster.address, log_to_driver=False)

        @ray.remote(num_cpus=1)
        def busy() -> None:
            time.sleep(0.3)

        @ray.remote(num_cpus=1)
        class Where:
            def node(self) -> str:
                return ray.get_runtime_context().get_node_id()

        for k in range(2 * args.pairs):
            mode = "settled" if k % 2 else "at_once"
            ray.get([busy.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
                     for n in (cluster.head_node.node_id, worker.node_id)])
            if mode == "settled":
                settled_cpus()
            actors = [Where.options(scheduling_strategy="SPREAD").remote() for _ in range(2)]
            nodes_used[mode].append(len(set(ray.get([a.node.remote() for a in actors]))))
            for a in actors:
                ray.kill(a)
            time.sleep(0.5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(nodes_used), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"nodes_used": nodes_used}, indent=1) + "\n")


if __name__ == "__main__":
    main()
