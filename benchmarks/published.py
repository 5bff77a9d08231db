"""The published FakET command against faket's, whole commands on the same inputs (#12, target 5).

usage: FAKET_PUBLISHED=/path/to/checkout python benchmarks/published.py [--size 4096] [--tilts 11]
                                                    [--device cuda] [--modes float32,bf16] [--json OUT]

FAKET_PUBLISHED is a checkout of the published code (github.com/paloha/faket);
its command runs as its README gives it (``python -m faket.style_transfer.cli``,
published settings, end scale = the image size), in that folder, with its own
dependencies (torchvision, scikit-image, matplotlib, tifffile, tqdm, Pillow,
mrcfile): FAKET_PUBLISHED_PATH names a folder of them to put on its
PYTHONPATH when the interpreter lacks them. faket runs as ``faket stylize`` in
its default mode. Both get the same random CONTENT, style and NOISY stacks and
the same seeded random VGG-19 weights, written where torchvision keeps its
download (TORCH_HOME), so the published code loads them instead of downloading.

Reported: each command's wall seconds (imports, reading, NST, writing: all of
it), published over faket, and max / mean / 99.9th percentile of |faket -
published| over the output; with ``--modes``, the same for ``faket stylize``
in each further precision mode (``deviation_by_mode``, ``seconds_by_mode``).
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

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"  # the name torchvision caches its VGG-19 download under


def _inputs(folder: Path, size: int, tilts: int) -> dict[str, Path]:
    """Random CONTENT, style and NOISY stacks ``(tilts, size, size)`` and the weights, in ``folder``."""
    import torch
    from baseline import TorchvisionVGG19

    from faket.io import write_mrc
    from faket.weights import random_state_dict

    rng = np.random.default_rng(0)
    paths = {k: folder / f"{k}.mrc" for k in ("content", "style", "noisy")}
    for key, path in paths.items():
        write_mrc(path, rng.random((tilts, size, size), dtype=np.float32) * (2 if key == "style" else 1))
    full = TorchvisionVGG19().state_dict()  # the classifier too: torchvision loads the whole file
    full.update(random_state_dict(0))
    checkpoints = folder / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    paths["weights"] = checkpoints / TORCHVISION_FILE
    torch.save(full, paths["weights"])
    return paths


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({res.returncode}): {res.stderr[-1500:]}")
    return seconds


def _deviation(out: Path, published: np.ndarray) -> dict[str, float]:
    from faket.io import read_mrc

    diff = np.abs(read_mrc(out).astype(np.float64) - published)
    return {"max": float(diff.max()), "mean": float(diff.mean()), "p999": float(np.quantile(diff, 0.999))}


def compare(checkout: Path, size: int, tilts: int, device: str, modes: tuple[str, ...] = ()) -> dict:
    """Both whole commands on the same ``tilts`` x ``size``^2 series; returns the figures.
    modes: further ``--precision`` modes for ``faket stylize``, each one's deviation from the
    published output reported (``deviation_by_mode``; the default mode's is always there)."""
    from faket.io import read_mrc

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        p = _inputs(folder, size, tilts)
        # the same CPU threads for both: a thread count changes the convolutions' round-off
        threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
        env = {**os.environ, "TORCH_HOME": str(folder / "torch_home"), "OMP_NUM_THREADS": str(threads)}
        extra = os.environ.get("FAKET_PUBLISHED_PATH")
        pub_env = {**env, "PYTHONPATH": os.pathsep.join(x for x in (str(checkout), extra) if x)}
        devices = ["--devices", "cuda:0"] if device == "cuda" else ["--devices", "cpu", "--ncpus", str(threads)]
        published = _timed(
            [sys.executable, "-m", "faket.style_transfer.cli", str(p["content"]), str(p["style"]),
             "--init", str(p["noisy"]), "--output", str(folder / "published.mrc"), *devices,
             "--random-seed", "0", "--min-scale", str(size), "--end-scale", str(size),
             "--seq_start", "0", "--seq_end", str(tilts), "--style-weights", "1.0", "--content-weight", "1.0",
             "--tv-weight", "0", "--iterations", "1", "--initial-iterations", "1", "--save-every", "2",
             "--step-size", "0.15", "--avg-decay", "0.99", "--style-scale-fac", "1.0", "--pooling", "max",
             "--content_layers", "8", "--content_layers_weights", "100", "--model_weights", "pretrained"],
            checkout, pub_env,
        )
        print(f"published command: {published:.1f} s", file=sys.stderr, flush=True)  # kept if cut off later
        reference = read_mrc(folder / "published.mrc").astype(np.float64)
        seconds, deviation = {}, {}
        for mode in ("auto", *(m for m in modes if m != "auto")):
            out = folder / f"faket-{mode}.mrc"
            seconds[mode] = _timed(
                [sys.executable, "-m", "faket.cli", "stylize", str(p["content"]), str(p["style"]),
                 "--init", str(p["noisy"]), "-o", str(out), "--vgg-weights", str(p["weights"]),
                 "--device", device, "--precision", mode],
                folder, env,
            )
            deviation[mode] = _deviation(out, reference)
            print(f"faket --precision {mode}: {seconds[mode]:.1f} s, max abs vs published "
                  f"{deviation[mode]['max']:.3g}", file=sys.stderr, flush=True)
    return {
        "size": size,
        "tilts": tilts,
        "device": device,
        "published_seconds": published,
        "faket_seconds": seconds["auto"],
        "published_over_faket": published / seconds["auto"],
        "max_abs_vs_published": deviation["auto"]["max"],
        "mean_abs_vs_published": deviation["auto"]["mean"],
        "p999_abs_vs_published": deviation["auto"]["p999"],
        "seconds_by_mode": seconds,
        "deviation_by_mode": deviation,
    }


def _refuse(why: str) -> None:
    from bench_core import refuse

    refuse("published.py", why)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tilts", type=int, default=11)
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--modes", default="", help="further faket --precision modes, comma list (e.g. float32,bf16)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from faket.settings import PRECISIONS

    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = [m for m in modes if m not in PRECISIONS]
    if unknown:
        _refuse(f"--modes {unknown[0]!r} is not a precision mode: use {', '.join(PRECISIONS)}")
    checkout = os.environ.get("FAKET_PUBLISHED")
    if not checkout or not (Path(checkout) / "faket" / "style_transfer" / "cli.py").is_file():
        _refuse("set FAKET_PUBLISHED to a checkout of the published code (faket/style_transfer/cli.py)")
    from bench_core import emit, machine_info

    result = compare(Path(checkout), args.size, args.tilts, args.device, modes)
    result["machine"] = machine_info(args.device)
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    emit(result, args.json)


if __name__ == "__main__":
    main()
