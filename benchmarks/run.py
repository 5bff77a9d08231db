"""The benchmark suite: one command, JSON results with machine info.

usage: python benchmarks/run.py [--quick] [--full] [--experiments] [--cases nst,...] [--device cpu|cuda]
                               [--out FILE]

Cases (sizes depend on the device; --quick runs the smallest only):
- nst: FakET NST per tilt at the published settings against the unoptimised
  baseline (benchmarks/baseline.py), measured in the same run, outputs compared;
  peak memory (process RSS, or GPU max allocated) and achieved conv FLOP/s;
- command: the whole `faket stylize` command on 9 x 128 x 128 (start-up
  included) against the baseline run as a command;
- projection / reconstruction: 61 tilts of 128^3, 256^3 (and 512^3 with --full);
- experiments (--experiments): cudnn autotuning, channels_last, torch.compile.
Weights are `random` (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baseline import BaselineNST, TorchvisionVGG19  # noqa: E402
from bench_core import (cpu_peak_gflops, gpu_peak_tflops, machine_info, peak_memory_mb,  # noqa: E402
                        reset_peak_memory, time_call)

from faket.io import angles_range, write_mrc  # noqa: E402
from faket.nst import StyleTransfer, stylize_stack  # noqa: E402
from faket.projection import project  # noqa: E402
from faket.reconstruction import reconstruct  # noqa: E402
from faket.settings import NSTSettings  # noqa: E402
from faket.vgg import CONV_CHANNELS, CONV_INDICES, POOL_INDICES  # noqa: E402
from faket.weights import random_state_dict  # noqa: E402


def conv_flops(h: int, w: int, last: int) -> float:
    """FLOPs (2 per multiply-add) of the convolutions up to layer ``last`` for one image."""
    flops, c_in = 0.0, 3
    for i in range(last + 1):
        if i in CONV_INDICES:
            c_out = CONV_CHANNELS[CONV_INDICES.index(i)]
            flops += 2.0 * c_in * c_out * 9 * h * w
            c_in = c_out
        elif i in POOL_INDICES:
            h, w = h // 2, w // 2
    return flops


def nst_step_flops(h: int, w: int, s: NSTSettings) -> float:
    """Conv FLOPs of one tilt at one Adam step: content pass, style pass, image forward + backward."""
    last = max(s.content_layers + s.style_layers)
    return conv_flops(h, w, max(s.content_layers)) + 3 * conv_flops(h, w, last)


def nst_case(h: int, w: int, n: int, device: str, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    c, s, i = (rng.normal(size=(n, h, w)).astype(np.float32) for _ in range(3))
    sd = random_state_dict(0)
    st = NSTSettings()
    fast = StyleTransfer(sd, st, device=device)
    base = BaselineNST(sd, st, device=device)
    out_fast = stylize_stack(c[:1], [s[:1]], i[:1], fast)         # warm-up and check
    out_base = base.stylize_stack(c[:1], s[:1], i[:1])
    reset_peak_memory(device)
    t_fast = time_call(lambda: stylize_stack(c, [s], i, fast), device, 1)
    mem = peak_memory_mb(device)
    t_base = time_call(lambda: base.stylize_stack(c, s, i), device, 1)
    for _ in range(repeats - 1):          # interleaved, so that machine noise hits both alike
        t_fast = min(t_fast, time_call(lambda: stylize_stack(c, [s], i, fast), device, 1))
        t_base = min(t_base, time_call(lambda: base.stylize_stack(c, s, i), device, 1))
    per_tilt = t_fast / n
    flops = nst_step_flops(h, w, st)
    peaks = gpu_peak_tflops(torch.cuda.get_device_name(device)) if device.startswith("cuda") else None
    return {"case": "nst", "height": h, "width": w, "tilts": n, "seconds_per_tilt": per_tilt,
            "tilts_per_second": 1 / per_tilt, "baseline_seconds_per_tilt": t_base / n,
            "speedup_vs_baseline": t_base / t_fast, "peak_memory_mb": mem,
            "gflops_per_second": flops / per_tilt / 1e9,
            "max_abs_diff_vs_baseline": float(np.abs(out_fast - out_base).max()),
            **({f"fraction_of_{k}_peak": flops / per_tilt / 1e12 / v for k, v in peaks.items()}
               if peaks else {})}


def series_case(h: int, w: int, n: int, device: str) -> dict:
    """A whole tilt-series through stylize_stack (host arrays in, host array out), published settings."""
    rng = np.random.default_rng(5)
    c, s, i = (rng.random((n, h, w), dtype=np.float32) for _ in range(3))
    t = StyleTransfer(random_state_dict(0), NSTSettings(), device=device)
    stylize_stack(c[:1], [s[:1]], i[:1], t)                     # warm-up
    reset_peak_memory(device)
    secs = time_call(lambda: stylize_stack(c, [s], i, t), device, 1)
    return {"case": "series", "height": h, "width": w, "tilts": n, "seconds": secs,
            "seconds_per_tilt": secs / n, "peak_memory_mb": peak_memory_mb(device)}


def command_case(tmp: Path) -> dict:
    """Whole commands on 9 x 128 x 128 with a full-size torchvision VGG-19 file (548 MB).

    Both read the same file, as real runs read the ImageNet one: the baseline
    loads it whole, as torchvision does; `faket` maps it and reads the
    features only. `faket` hashes a weight file once for provenance and caches
    the hash; the first (cold) run is reported separately.
    """
    rng = np.random.default_rng(1)
    paths = {}
    for k in ("content", "style", "init"):
        paths[k] = write_mrc(tmp / f"{k}.mrc", rng.normal(size=(9, 128, 128)).astype(np.float32))
    state = TorchvisionVGG19().state_dict()
    state.update(random_state_dict(0))
    weights = tmp / "vgg19-full.pth"
    torch.save(state, weights)
    del state
    env = {**os.environ, "FAKET_NO_DOWNLOAD": "1", "XDG_CACHE_HOME": str(tmp / "cache")}
    faket = [sys.executable, "-m", "faket.cli", "stylize", str(paths["content"]), str(paths["style"]),
             "--init", str(paths["init"]), "-o", str(tmp / "a.mrc"), "--vgg-weights", str(weights),
             "--device", "cpu"]
    base = [sys.executable, str(HERE / "baseline.py"), str(paths["content"]), str(paths["style"]),
            str(paths["init"]), str(tmp / "b.mrc"), str(weights)]

    def run(cmd: list[str]) -> float:
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        return time.perf_counter() - t

    cold = run(faket)
    times = {"faket": float("inf"), "baseline": float("inf")}
    for _ in range(3):                      # interleaved repeats, best of each
        for name, cmd in (("faket", faket), ("baseline", base)):
            times[name] = min(times[name], run(cmd))
    from faket.io import read_mrc
    diff = float(np.abs(read_mrc(tmp / "a.mrc") - read_mrc(tmp / "b.mrc")).max())
    return {"case": "command", "tilts": 9, "height": 128, "width": 128,
            "weights": "full torchvision-layout file, 548 MB",
            "faket_seconds": times["faket"], "faket_cold_seconds": cold,
            "baseline_seconds": times["baseline"],
            "speedup_vs_baseline": times["baseline"] / times["faket"], "max_abs_diff_vs_baseline": diff}


def precision_cases(device: str) -> list[dict]:
    """Deviation of each numeric mode from float32 on the golden inputs, and its speed.

    Speed at 1024^2 on a GPU, 64^2 on a CPU (bf16 is emulated, slowly, on CPUs without it).
    """
    from faket.io import read_mrc

    data = HERE.parent / "tests" / "data"
    c, s, i = (read_mrc(data / f"{k}.mrc") for k in ("content", "style", "init"))
    sd = random_state_dict(0)
    ref = stylize_stack(c, [s], i, StyleTransfer(sd, NSTSettings(), device=device))
    rng = np.random.default_rng(3)
    size = 1024 if device.startswith("cuda") else 64
    big = [rng.normal(size=(2, size, size)).astype(np.float32) for _ in range(3)]
    rows = []
    base_time = None
    for mode in ("float32", "tf32", "bf16"):
        st = NSTSettings(precision=mode)
        out = stylize_stack(c, [s], i, StyleTransfer(sd, st, device=device))
        t = StyleTransfer(sd, st, device=device)
        stylize_stack(big[0][:1], [big[1][:1]], big[2][:1], t)
        secs = time_call(lambda t=t: stylize_stack(big[0], [big[1]], big[2], t), device, 2) / 2
        base_time = base_time or secs
        rows.append({"case": "precision", "mode": mode, "max_abs_vs_float32": float(np.abs(out - ref).max()),
                     "mean_abs_vs_float32": float(np.abs(out - ref).mean()),
                     "size": size, "seconds_per_tilt": secs, "speedup_vs_float32": base_time / secs})
    return rows


def experiment_cases(device: str) -> list[dict]:
    """Execution experiments at the published settings: speed and deviation against the default.

    cudnn autotuning (GPU only), NHWC activations (channels_last) and
    torch.compile of the network. Deviation on the golden inputs (CPU
    float32 default as the reference on a CPU, the device's default on a GPU);
    speed on 2 tilts of 1024^2 on a GPU, 128^2 on a CPU (compile time reported
    apart: it is paid once per process and shape).
    """
    from faket.io import read_mrc

    data = HERE.parent / "tests" / "data"
    c, s, i = (read_mrc(data / f"{k}.mrc") for k in ("content", "style", "init"))
    sd = random_state_dict(0)
    gpu = device.startswith("cuda")
    size = 1024 if gpu else 128
    rng = np.random.default_rng(4)
    big = [rng.normal(size=(2, size, size)).astype(np.float32) for _ in range(3)]
    options = [("default", {}), ("channels_last", {"channels_last": True}), ("compile", {"compile": True})]
    if gpu:
        options.insert(1, ("cudnn_benchmark", {}))
    rows, ref, base_time = [], None, None
    for name, kw in options:
        torch.backends.cudnn.benchmark = name == "cudnn_benchmark"
        t = StyleTransfer(sd, NSTSettings(), device=device, **kw)
        start = time.perf_counter()
        out = stylize_stack(c, [s], i, t)                   # golden inputs (64^2), also compiles
        first = time.perf_counter() - start
        ref = out if ref is None else ref
        stylize_stack(big[0][:1], [big[1][:1]], big[2][:1], t)   # warm-up at the timed size
        secs = time_call(lambda t=t: stylize_stack(big[0], [big[1]], big[2], t), device, 2) / 2
        base_time = base_time or secs
        rows.append({"case": "experiment", "option": name, "size": size, "seconds_per_tilt": secs,
                     "speedup_vs_default": base_time / secs, "first_call_seconds": first,
                     "max_abs_vs_default": float(np.abs(out - ref).max())})
    torch.backends.cudnn.benchmark = False
    return rows


def geometry_cases(sizes: list[int], device: str) -> list[dict]:
    rows = []
    theta = angles_range(-60, 60, 2)
    for n in sizes:
        vol = np.random.default_rng(2).random((n, n, n), dtype=np.float32)
        t = time_call(lambda v=vol: project(v, theta, device=device), device, 1)
        tilts = project(vol, theta, device=device)
        r = time_call(lambda ts=tilts: reconstruct(ts, theta, device=device), device, 1)
        rows.append({"case": "projection", "size": n, "tilts": 61, "seconds": t})
        rows.append({"case": "reconstruction", "size": n, "tilts": 61, "seconds": r})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--experiments", action="store_true",
                    help="also measure cudnn autotuning, channels_last and torch.compile")
    ap.add_argument("--cases", default="nst,command,precision,series,experiments,geometry",
                    help="comma list to run (command runs on CPUs, series on GPUs, "
                         "experiments with --experiments)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cases = set(args.cases.split(","))
    gpu = args.device.startswith("cuda")
    if gpu:
        sizes = [(1024, 1024, 5), (2048, 2048, 3), (4096, 4096, 2), (4092, 5760, 2)]
    else:
        sizes = [(64, 64, 9), (128, 128, 9), (256, 256, 5), (512, 512, 2)]
    if args.quick:
        sizes = sizes[:2]
    rows = []
    for h, w, n in (sizes if "nst" in cases else []):
        row = nst_case(h, w, n, args.device, repeats=2 if (args.quick or h >= 512) else 3)
        rows.append(row)
        print(f"nst {h}x{w}: {row['seconds_per_tilt']:.3f} s/tilt, baseline "
              f"{row['baseline_seconds_per_tilt']:.3f} s/tilt, x{row['speedup_vs_baseline']:.2f}, "
              f"{row['gflops_per_second']:.1f} GFLOP/s, peak {row['peak_memory_mb']:.0f} MB", flush=True)
    if not gpu and "command" in cases:
        with tempfile.TemporaryDirectory() as tmp:
            row = command_case(Path(tmp))
        rows.append(row)
        print(f"command 9x128x128: faket {row['faket_seconds']:.2f} s, baseline "
              f"{row['baseline_seconds']:.2f} s, x{row['speedup_vs_baseline']:.2f}", flush=True)
    for row in (precision_cases(args.device) if "precision" in cases else []):
        rows.append(row)
        print(f"precision {row['mode']}: max |diff| vs float32 {row['max_abs_vs_float32']:.3g} "
              f"(mean {row['mean_abs_vs_float32']:.3g}), {row['seconds_per_tilt']:.3f} s/tilt at "
              f"{row['size']}^2, x{row['speedup_vs_float32']:.2f}", flush=True)
    if gpu and "series" in cases:
        row = series_case(4096, 4096, 61, args.device)
        rows.append(row)
        print(f"series 61 x 4096^2: {row['seconds']:.1f} s, peak {row['peak_memory_mb']:.0f} MB", flush=True)
    if args.experiments and "experiments" in cases:
        for row in experiment_cases(args.device):
            rows.append(row)
            print(f"experiment {row['option']}: {row['seconds_per_tilt']:.3f} s/tilt at {row['size']}^2, "
                  f"x{row['speedup_vs_default']:.2f}, first call {row['first_call_seconds']:.1f} s, "
                  f"max |diff| vs default {row['max_abs_vs_default']:.3g}", flush=True)
    geo = [128] if args.quick else [128, 256] + ([512] if args.full else [])
    for row in (geometry_cases(geo, args.device) if "geometry" in cases else []):
        rows.append(row)
        print(f"{row['case']} 61 x {row['size']}^3: {row['seconds']:.2f} s", flush=True)
    info = machine_info(args.device)
    if not gpu:
        info["cpu_peak_gflops_estimate"] = cpu_peak_gflops()
    result = {"machine": info, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "quick": args.quick,
              "results": rows}
    out = Path(args.out or HERE / "results" / f"suite-{args.device.replace(':', '')}-"
               f"{platform.node()}-{time.strftime('%Y%m%d')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
