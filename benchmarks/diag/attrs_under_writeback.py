"""Diagnostic: how long a run-store group's ``attrs.update`` takes while another process fills the
kernel's dirty page cache on the same disk.

usage: python benchmarks/diag/attrs_under_writeback.py [DIR] [TILTS] [--writers N] [--json OUT]

The prepare stage ends with one such update (its ``attrs`` phase: the stacks' value ranges, which
the NST waits for): 0.005-0.02 s in most runs, 0.14 s at 61 x 4096^2 on this 2-core VM with its
disk saturated, 0.67 s and 2.0 s at 61 x 4096^2 on the H200 machine (sessions 19 and 17), 0.05-3.2
s in session 24's six runs there, where one writer beside it left the update under 9 ms. Here
N child processes (``--writers``, default 1; the engine's pool has 14) each write TILTS raw
4096^2 float32 tilts (64 MB each) into DIR (default: the current folder), each through a
temporary file and a rename, as the run store's shards are written, while this one times an
update every 0.2 s; prints the idle update, the slowest ones with the dirty page cache at the
time, and their median.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for bench_core

WRITER = """
import os
import sys
import numpy as np
image = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32).tobytes()
for i in range(int(sys.argv[2])):
    path = f"{sys.argv[1]}/tilt{sys.argv[3]}-{i}"
    with open(path + ".tmp", "wb") as f:
        f.write(image)
    os.replace(path + ".tmp", path)
"""


def dirty_gb() -> float:
    """The kernel's dirty page cache, GB (bench_core.PageCache's reading of /proc/meminfo)."""
    from bench_core import PageCache

    return round(PageCache.meminfo().get("Dirty", 0.0), 2)


def timed_update(group, value: float) -> float:
    began = time.perf_counter()
    group.attrs.update({"probe": value})
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", default=".")
    parser.add_argument("tilts", nargs="?", type=int, default=120)
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.tilts < 1:
        parser.error("TILTS must be 1 or more")
    if args.writers < 1:
        parser.error("--writers must be 1 or more")
    from faket.store import open_store, warm_up

    folder = tempfile.mkdtemp(dir=args.dir)
    children: list[subprocess.Popen] = []
    try:
        group = open_store(folder + "/s.zarr").create_group("t")
        warm_up()
        idle = min(timed_update(group, k) for k in range(5))
        children += [
            subprocess.Popen([sys.executable, "-c", WRITER, folder, str(args.tilts), str(k)])
            for k in range(args.writers)
        ]
        samples = []
        while any(c.poll() is None for c in children):
            samples.append((round(timed_update(group, time.time()), 4), dirty_gb()))
            time.sleep(0.2)
    finally:
        for c in children:  # an error or Ctrl-C here: the writers it started end with it
            if c.poll() is None:
                c.kill()
                c.wait()
        shutil.rmtree(folder, ignore_errors=True)
    failed = [c.returncode for c in children if c.returncode]
    if failed:
        sys.exit(f"a writing process failed (exit {failed[0]})")
    seconds = [s for s, _ in samples]
    out = {
        "idle_seconds": round(idle, 4),
        "updates": len(samples),
        "median_seconds": round(statistics.median(seconds), 4) if seconds else None,
        "slowest": sorted(samples, reverse=True)[:5],
        "dirty_gb_peak": max((d for _, d in samples), default=0.0),
    }
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dir": args.dir, "tilts": args.tilts, "writers": args.writers, **out}, f, indent=1)


if __name__ == "__main__":
    main()
