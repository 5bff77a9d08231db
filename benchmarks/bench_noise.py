"""The noise model's CPU work per tilt: the statistics of a pair, and NOISY + CONTENT of a tilt.

usage: python benchmarks/bench_noise.py [--size 4096] [--tilts 8] [--workers 1,2]
                                        [--repeats 3] [--against DIR] [--json OUT]

``statistics`` is ``faket.noise.tilt_stats`` (the engine's noise-model stage),
``noise`` is ``faket.noise.apply_tilt_modalities`` for NOISY and CONTENT (the
prepare stage's noise phase, without its writes), both over ``--tilts`` random
tilts on each thread count of ``--workers``: seconds per tilt (the best of
``--repeats``) and the kernel's seconds per tilt (page faults of fresh arrays).
``--against DIR`` measures another checkout's ``faket`` (DIR holds its ``faket``
folder) the same way, interleaved run by run with this one, and reports each
figure's ratio (this / that). Each figure is the second run of a fresh process
(see :func:`_run_in`). ``benchmarks/results/noise-buffers-cpu-vm.json`` used it to
measure (and drop) reused per-thread buffers for both parts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _per_tilt(work, n: int, workers: int) -> tuple[float, float]:
    """Wall and kernel (system) seconds per tilt of ``work(i)`` over ``n`` tilts."""
    from faket._threads import for_each

    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for_each(work, range(n), workers)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return wall / n, (r1.ru_stime - r0.ru_stime) / n


def measure(size: int, tilts: int, workers: int) -> dict:
    """One run of both parts, in this process (the ``faket`` on its path)."""
    from faket.noise import NoiseModel, apply_tilt_modalities, tilt_stats

    rng = np.random.default_rng(size)
    clean = rng.random((tilts, size, size), dtype=np.float32)
    ref = clean * 0.5 + rng.standard_normal(clean.shape, dtype=np.float32)
    model = NoiseModel.given(0.6, 0.8, ref, order=-1)

    def noise(i: int) -> None:
        apply_tilt_modalities(clean[i], i, model, 1, ["noisy", "content"], 0.25, threads=workers)

    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    tilt_stats(ref, clean, workers)  # as the noise model's estimate calls it: the stack on threads
    stats_wall, r1 = (time.perf_counter() - t0) / tilts, resource.getrusage(resource.RUSAGE_SELF)
    stats_sys = (r1.ru_stime - r0.ru_stime) / tilts
    noise_wall, noise_sys = _per_tilt(noise, tilts, workers)
    return {
        "statistics_s_per_tilt": round(stats_wall, 4),
        "statistics_sys_s_per_tilt": round(stats_sys, 4),
        "noise_s_per_tilt": round(noise_wall, 4),
        "noise_sys_s_per_tilt": round(noise_sys, 4),
    }


def set_block(log2: int) -> None:
    """The blocked passes' block size, ``2**log2`` float64 values, in this process (an experiment:
    any size of at least 128 gives the same values bit for bit, :mod:`faket._pairwise`)."""
    import faket.noise as noise

    noise.block_for = lambda threads: 1 << log2


def _run_in(tree: str | None, size: int, tilts: int, workers: int, block: int | None = None, procs: int = 1) -> dict:
    """:func:`measure`'s second run in a fresh process, on ``tree``'s faket (None: this
    checkout's): a process that has worked before, as the engine's reused Ray workers have.
    A fresh process's first run meets other memory behaviour (unused pages in the heap).
    ``procs`` > 1: that many such processes at once, each with ``tilts`` tilts; the figures are
    their mean over ``procs`` (seconds per tilt of the processes together)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([tree, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = (
        f"import sys, json; sys.path.insert(0, {str(HERE)!r}); from bench_noise import measure, set_block; "
        + ("" if block is None else f"set_block({block}); ")
        + f"measure({size}, {tilts}, {workers}); print(json.dumps(measure({size}, {tilts}, {workers})))"
    )
    running = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(procs)]
    results = []
    for proc in running:
        stdout, stderr = proc.communicate()
        if proc.returncode:
            sys.exit(f"the measurement on {tree or 'this checkout'} failed:\n{stderr[-2000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return {k: round(sum(r[k] for r in results) / procs**2, 4) for k in results[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tilts", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--against", help="another checkout's folder (holding its faket/) to compare with")
    ap.add_argument("--blocks", default="", help="log2 block sizes to try, comma-separated (e.g. 15,17,19)")
    ap.add_argument("--procs", type=int, default=1,
                    help="that many processes at once, each one's --workers threads over --tilts tilts")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from bench_core import emit, machine_info, refuse

    if a.against is not None and not (Path(a.against) / "faket" / "noise.py").is_file():
        refuse("bench_noise.py", f"--against {a.against} holds no faket/noise.py: give the folder that holds faket/")
    workers = [int(x) for x in a.workers.split(",") if x.strip().isdigit() and int(x) > 0]
    if len(workers) != len(a.workers.split(",")) or min(a.size, a.tilts, a.repeats) < 1:
        refuse("bench_noise.py", "--workers takes thread counts like 1,2; --size, --tilts, --repeats at least 1")

    trees = {"this": None} if a.against is None else {"this": None, "against": a.against}
    blocks = [int(b) for b in a.blocks.split(",")] if a.blocks else [None]
    rows = []
    for w, block in ((w, b) for w in workers for b in blocks):
        runs: dict[str, list[dict]] = {k: [] for k in trees}
        for _ in range(a.repeats):  # interleaved: the machine's drift hits both alike
            for name, tree in trees.items():
                runs[name].append(_run_in(tree, a.size, a.tilts, w, block, a.procs))
        row: dict = {"workers": w, "procs": a.procs, "block_log2": block}
        print(json.dumps({**row, **runs["this"][-1]}), file=sys.stderr, flush=True)
        for name, results in runs.items():
            row[name] = {k: min(r[k] for r in results) for k in results[0]}
        if "against" in row:
            row["ratio"] = {k: round(row["this"][k] / row["against"][k], 3) for k in row["this"] if row["against"][k]}
        rows.append(row)
    emit(
        {
            "what": "faket.noise per tilt: statistics of a pair, NOISY + CONTENT of a tilt (best of repeats)",
            "size": a.size,
            "tilts": a.tilts,
            "repeats": a.repeats,
            "against": a.against,
            "rows": rows,
            "machine": machine_info("cpu"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        a.json,
    )


if __name__ == "__main__":
    main()
