"""Several tomograms through one GPU actor: each tomogram's NST as soon as it is prepared, or staged.

usage: python benchmarks/engine_pipeline.py [--size 1024] [--tilts 21] [--tomograms 4]
                                            [--kernel-seconds 0.1 | --device cuda]
                                            [--repeats 2] [--json OUT]

Ray is told the machine has one GPU, so the engine starts its actor before the
prepare stage; the NST is the identity after ``--kernel-seconds`` per tilt that
hold no CPU (``FAKET_ENGINE_KERNEL=sleep:S``), a stand-in for a GPU's compute;
with ``--device cuda`` the NST is the real one, on the machine's GPU.
Each repeat runs the same spec twice, interleaved: ``pipelined`` (the engine's
way: a tomogram's NST tasks are queued as soon as its prepare task ends) and
``staged`` (``FAKET_ENGINE_STAGED=1``: every tomogram prepared before any NST).
``ratio`` is the pipelined run's seconds over the staged run's (best of repeats).
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


def tomograms_spec(spec: Path, count: int) -> None:
    """engine_feed's one-tomogram spec with ``count`` tomograms (the same tilts, seeds 0, 1, ...)
    and no actor count (one actor per declared GPU)."""
    text = spec.read_text().replace("actors = 1\n", "")
    head, _, block = text.partition("[[tomogram]]")
    entries = [
        "[[tomogram]]" + block.replace('name = "feed"', f'name = "feed_{k:03d}"\nseed = {k}')
        for k in range(count)
    ]
    spec.write_text(head + "".join(entries))


def measure(size: int, tilts: int, count: int, staged: bool, device: str = "cpu") -> dict:
    import ray

    from engine_feed import write_inputs
    from faket_cluster.engine import STAGED_ENV, init_ray, run
    from faket_cluster.spec import load_spec

    os.environ.pop(STAGED_ENV, None)
    if staged:
        os.environ[STAGED_ENV] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = write_inputs(Path(tmp), size, tilts, device=device)
        tomograms_spec(spec_path, count)
        init_ray(num_cpus=os.cpu_count() or 2, num_gpus=1)
        spec = load_spec(spec_path)
        try:
            summary = run(spec, say=lambda m: print(m, file=sys.stderr))
        finally:
            ray.shutdown()
            os.environ.pop(STAGED_ENV, None)
        store_bytes = sum(f.stat().st_size for f in Path(spec.store).rglob("*") if f.is_file())
    return {
        "pipelined": summary["pipelined"],
        "run_seconds": round(summary["seconds"], 2),
        "stage_seconds": summary["stage_seconds"],
        "prepare_seconds": summary["prepare_seconds"],
        "nst_seconds": round(summary["nst_seconds"], 2),
        "done_now": summary["done_now"],
        "prepare_phase_seconds": summary["phase_seconds"]["prepare"],
        "store_bytes": store_bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tilts", type=int, default=21)
    ap.add_argument("--tomograms", type=int, default=4)
    ap.add_argument("--kernel-seconds", type=float, default=0.1, help="stand-in device seconds per tilt")
    ap.add_argument("--device", choices=["stand-in", "cuda"], default="stand-in",
                    help="cuda: the real NST on this machine's GPU instead of the stand-in")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from bench_core import emit, machine_info, refuse

    if min(a.size, a.tilts, a.repeats) < 1 or a.tomograms < 2 or a.kernel_seconds < 0:
        refuse("engine_pipeline.py", "--size, --tilts, --repeats at least 1, --tomograms at least 2, "
               "--kernel-seconds not negative")
    cuda = a.device == "cuda"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            refuse("engine_pipeline.py", "--device cuda, but torch sees no CUDA device: leave it out")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not cuda:  # the local Ray's workers inherit it
        os.environ["FAKET_ENGINE_KERNEL"] = f"sleep:{a.kernel_seconds}"
    runs: dict[str, list[dict]] = {"pipelined": [], "staged": []}
    for _ in range(a.repeats):  # interleaved: the machine's drift hits both alike
        for mode in runs:
            runs[mode].append(
                measure(a.size, a.tilts, a.tomograms, mode == "staged", "cuda" if cuda else "cpu")
            )
    best = {mode: min(r["run_seconds"] for r in rs) for mode, rs in runs.items()}
    emit(
        {
            "what": f"tomograms through one {'GPU' if cuda else 'stand-in GPU'} actor: NST of each once "
            "prepared, against staged",
            "size": a.size,
            "tilts": a.tilts,
            "tomograms": a.tomograms,
            "kernel_seconds": None if cuda else a.kernel_seconds,
            "runs": runs,
            "best_run_seconds": best,
            "ratio": round(best["pipelined"] / best["staged"], 3),
            "machine": machine_info("cuda" if cuda else "cpu"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        a.json,
    )


if __name__ == "__main__":
    main()
