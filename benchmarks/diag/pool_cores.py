"""A/B (diagnostic): how many cores one tilt-pool process keeps busy while it writes tilts into the
run store, with each tilt's chunks coded in its own thread (``own``: what a pool process does since
session 23, ``faket._shards.code_chunks_in_caller``) or on its shard threads (``shard``: before).

usage: python benchmarks/diag/pool_cores.py [SIZE] [TILTS] [REPEATS] [--json OUT]

A pool of one process (``faket._procs.tilt_pool``) writes TILTS random SIZE^2 tilts into two
stacks (as the noise phase writes NOISY and CONTENT) on /dev/shm, the two modes alternating.
Per mode: the process's CPU seconds over the jobs' wall seconds (``cores``: 1.0 is one core) and
the CPU and wall seconds per tilt (both stacks), the first tilt of each run left out.
A GPU host's pool runs 14 such processes beside Ray's start and the actor's warm-up, which get
the two cores the pool leaves (``faket._procs.SPARE_CORES``) only if each process keeps to one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time

import numpy as np

STACKS = ("noisy", "content")


def job(writer, index: int, own: bool, size: int) -> tuple[float, float, int]:
    """In a pool process: one tilt into both stacks; its CPU and wall seconds, the threads alive."""
    from faket._shards import code_chunks_in_caller

    code_chunks_in_caller(own)
    image = np.random.default_rng(index).standard_normal((size, size), dtype=np.float32)
    cpu, wall = time.process_time(), time.perf_counter()
    for name in STACKS:
        writer.put(name, index, image)
    return time.process_time() - cpu, time.perf_counter() - wall, threading.active_count()


def one_run(size: int, tilts: int, own: bool) -> dict:
    import pool_cores  # this file as a module: the pool's processes start without a main module

    from faket._procs import tilt_pool
    from faket.store import StoreSink, create_stack, open_store

    folder = tempfile.mkdtemp(dir="/dev/shm")
    try:
        group = open_store(folder + "/s.zarr").create_group("t")
        for name in STACKS:
            create_stack(group, name, (tilts, size, size))
        writer = StoreSink(group, STACKS).writer(STACKS)
        with tilt_pool(1) as pool:
            out = [pool.submit(pool_cores.job, writer, i, own, size).result() for i in range(tilts)]
    finally:
        shutil.rmtree(folder)
    cpu, wall = sum(o[0] for o in out[1:]), sum(o[1] for o in out[1:])
    n = tilts - 1
    return {
        "mode": "own" if own else "shard",
        "cores": round(cpu / wall, 3),
        "cpu_per_tilt": round(cpu / n, 4),
        "wall_per_tilt": round(wall / n, 4),
        "threads": out[-1][2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("size", type=int, nargs="?", default=4096)
    parser.add_argument("tilts", type=int, nargs="?", default=8)
    parser.add_argument("repeats", type=int, nargs="?", default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.tilts < 2 or args.size < 1 or args.repeats < 1:
        parser.error("SIZE and REPEATS must be 1 or more, TILTS 2 or more (the first is left out)")
    runs = []
    for _ in range(args.repeats):
        for own in (False, True):
            runs.append(one_run(args.size, args.tilts, own))
            print(json.dumps(runs[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "tilts": args.tilts, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
