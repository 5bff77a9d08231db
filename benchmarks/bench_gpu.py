"""The GPU benchmark (`make bench-gpu`): per-tilt time, memory, precision and where the time goes.

usage: python benchmarks/bench_gpu.py [--quick] [--out-dir DIR] [--skip engine,profile] [--sizes 1024,4092x5760]

On one CUDA device, published settings, random VGG-19 weights:
- per tilt, in one process (`stylize_stack`, host arrays in and out), each
  precision mode (float32, tf32 = the default ``auto`` on CUDA, bf16) at 1024^2,
  2048^2, 4096^2 and 4092 x 5760: seconds per tilt (best of 2 after a warm-up)
  and peak GPU memory (max allocated) against the memory model's prediction;
- each mode's deviation from strict float32 at 1024^2 (max, mean, 99.9th pct);
- with ``--with layout``: NCHW against channels-last activations (time, difference) at 2048^2 and 4096^2;
- the fraction of GPU time in network kernels (convolution, ReLU, pooling,
  forward and backward) from torch.profiler, 2 tilts of 2048^2 and 4096^2 in the
  default mode, with and without the host<->device copies (they run beside the compute);
- with ``--with experiments``: the published arithmetic (float32 Gram matmuls) against the unfused layers, cuDNN
  autotuning and the default (cuDNN's fused convolution + bias + ReLU, ``fuse_conv_relu``);
- the engine (Ray, one GPU actor, ``engine_feed.py --real-nst``) against the same
  NST in one process, at 1024^2 x 41 tilts (``--engine``, e.g. also 4096x11);
- a whole engine run, 61 x 4096^2, its stages and the tasks' phases, its inputs at rest in
  /dev/shm and the page cache's dirty peak (``--end-to-end``);
- with FAKET_PUBLISHED=/path/to/published/checkout: the published command against
  ``faket stylize``, whole commands on the same 11 x 4096^2 series (``published.py``).
Writes benchmarks/results/gpu-<device>-<date>.json and .md (or under --out-dir).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_core import machine_info, peak_memory_mb, reset_peak_memory, time_call  # noqa: E402

from faket._tiling import predict_peak_bytes  # noqa: E402
from faket.nst import StyleTransfer, stylize_stack  # noqa: E402
from faket.settings import NSTSettings  # noqa: E402
from faket.weights import random_state_dict  # noqa: E402

MODES = ["float32", "tf32", "bf16"]
#: studies behind the defaults, run with --with: they keep `make bench-gpu` within its 6 minutes
OPTIONAL = {"experiments", "layout"}
SIZES = [(1024, 1024), (2048, 2048), (4096, 4096), (4092, 5760)]
#: aten operators that are the VGG-19 passes (forward and backward).
NETWORK_OPS = re.compile(r"conv|cudnn|relu|clamp_min|threshold|max_pool|avg_pool|pool2d")  # ReLU runs as clamp_min_


def _stack(h: int, w: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((n, h, w), dtype=np.float32) for _ in range(3)]


def per_tilt(sizes: list[tuple[int, int]], device: str) -> list[dict]:
    rows, sd = [], random_state_dict(0)
    for h, w in sizes:
        c, s, i = _stack(h, w, 2, h)
        for mode in MODES:
            t = StyleTransfer(sd, NSTSettings(precision=mode), device=device)
            stylize_stack(c[:1], [s[:1]], i[:1], t)                  # warm-up (cuDNN handles, allocator)
            reset_peak_memory(device)
            secs = time_call(lambda t=t: stylize_stack(c, [s], i, t), device, 2) / 2
            peak = peak_memory_mb(device) / 1024
            predicted = predict_peak_bytes(h, w, 1, t.net.last) / 2**30
            rows.append({"height": h, "width": w, "precision": mode, "seconds_per_tilt": secs,
                         "peak_memory_gb": peak, "predicted_memory_gb": predicted,
                         "peak_over_predicted": peak / predicted})
            print(f"{h}x{w} {mode}: {secs:.3f} s/tilt, peak {peak:.1f} GB (model {predicted:.1f})", flush=True)
            del t
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def layouts(device: str, sizes: list[int]) -> list[dict]:
    """NCHW against channels-last (NHWC) activations in the default mode: time and difference."""
    rows, sd = [], random_state_dict(0)
    for size in sizes:
        c, s, i = _stack(size, size, 2, size + 1)
        outs = {}
        for nhwc in (False, True):
            t = StyleTransfer(sd, NSTSettings(), device=device, channels_last=nhwc)
            stylize_stack(c[:1], [s[:1]], i[:1], t)
            secs = time_call(lambda t=t: outs.__setitem__(nhwc, stylize_stack(c, [s], i, t)), device, 1) / 2
            rows.append({"size": size, "layout": "nhwc" if nhwc else "nchw", "precision": t.precision,
                         "seconds_per_tilt": secs})
            print(f"layout {rows[-1]['layout']} {size}^2: {secs:.3f} s/tilt", flush=True)
        rows[-1]["max_abs_vs_nchw"] = float(np.abs(outs[True] - outs[False]).max())
    return rows


def deviations(device: str, size: int = 1024) -> list[dict]:
    c, s, i = _stack(size, size, 2, 7)
    sd = random_state_dict(0)
    modes = ["float32"] + [m for m in MODES if m != "float32"]
    out = {m: stylize_stack(c, [s], i, StyleTransfer(sd, NSTSettings(precision=m), device=device))
           for m in modes}
    rows = []
    for m in modes:
        d = np.abs(out[m] - out["float32"])
        rows.append({"precision": m, "size": size, "max_abs_vs_float32": float(d.max()),
                     "mean_abs_vs_float32": float(d.mean()), "p999_abs_vs_float32": float(np.quantile(d, 0.999))})
        print(f"deviation {m} vs float32 at {size}^2: max {d.max():.3g}, mean {d.mean():.3g}", flush=True)
    return rows


def network_fraction(device: str, size: int = 2048) -> dict:
    from torch.profiler import ProfilerActivity, profile

    c, s, i = _stack(size, size, 2, 11)
    t = StyleTransfer(random_state_dict(0), NSTSettings(), device=device)
    stylize_stack(c[:1], [s[:1]], i[:1], t)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        stylize_stack(c, [s], i, t)
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    ops = [(e.key, e.self_device_time_total) for e in events
           if e.key.startswith("aten::") and e.self_device_time_total > 0]
    total = sum(v for _, v in ops)
    net = sum(v for k, v in ops if NETWORK_OPS.search(k))
    # host<->device copies run on the copy engines (a side stream): beside the compute, not in it
    transfers = sum(e.self_device_time_total for e in events if e.key.startswith("Memcpy") and "DtoD" not in e.key)
    top = sorted(ops, key=lambda kv: -kv[1])[:15]
    compute = total - transfers
    row = {"size": size, "tilts": 2, "precision": t.precision, "gpu_ms": total / 1e3,
           "network_ms": net / 1e3, "network_fraction": net / total if total else None,
           "transfer_ms": transfers / 1e3, "network_fraction_of_compute": net / compute if compute > 0 else None,
           "wall_ms": wall * 1e3, "top_ops_ms": {k: v / 1e3 for k, v in top}}
    print(f"profile {size}^2: network {net / 1e3:.0f} of {total / 1e3:.0f} ms GPU time "
          f"({transfers / 1e3:.0f} ms host<->device copies; wall {wall * 1e3:.0f} ms)", flush=True)
    return row


#: experiment variants: precision mode, cuDNN's fused conv + bias + ReLU, TF32 Gram matmuls, cuDNN autotuning
VARIANTS = {"published": ("tf32", False, False, False), "unfused": ("tf32", False, True, False),
            "cudnn_benchmark": ("tf32", False, True, True), "default": ("tf32", True, True, False),
            "bf16_unfused": ("bf16", False, True, False), "bf16": ("bf16", True, True, False)}


def experiments(device: str, size: int) -> list[dict]:
    """At ``size``^2: the published arithmetic (TF32 convolutions, float32 Gram matmuls), TF32
    Gram matmuls too with the layers unfused, that with cuDNN autotuning (``cudnn.benchmark``),
    the default (TF32 Gram matmuls, cuDNN's fused conv + bias + ReLU), and bf16 unfused and
    fused (its default); time per tilt and the largest difference from the published arithmetic."""
    c, s, i = _stack(size, size, 2, size + 3)
    sd, rows, base = random_state_dict(0), [], None
    for name, (mode, fuse, tf32_matmul, autotune) in VARIANTS.items():
        t = StyleTransfer(sd, NSTSettings(precision=mode), device=device, fuse_conv_relu=fuse)  # sets the mode's flags
        torch.backends.cuda.matmul.allow_tf32 = tf32_matmul
        torch.backends.cudnn.benchmark = autotune
        out: dict = {}
        try:
            stylize_stack(c[:1], [s[:1]], i[:1], t)
            secs = time_call(lambda t=t: out.__setitem__("x", stylize_stack(c, [s], i, t)), device, 2) / 2
        finally:
            torch.backends.cudnn.benchmark = False
        base = out["x"] if base is None else base
        rows.append({"size": size, "variant": name, "seconds_per_tilt": secs,
                     "max_abs_vs_published": float(np.abs(out["x"] - base).max())})
        print(f"experiment {name} {size}^2: {secs:.3f} s/tilt, max abs vs published arithmetic "
              f"{rows[-1]['max_abs_vs_published']:.3g}", flush=True)
        del t
    return rows


def engine_vs_in_process(device: str, runs: list[tuple[int, int]], loop: bool = True) -> list[dict]:
    """``engine_feed.py --real-nst`` per (size, tilts): one GPU actor against the same NST in one process
    (``loop``), or the engine's whole run alone, its inputs at rest (:func:`resting_inputs`)."""
    import shutil
    import subprocess
    import tempfile

    rows = []
    for size, tilts in runs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "feed.json"
            inputs = None if loop else resting_inputs(size, tilts)
            cmd = [sys.executable, str(HERE / "engine_feed.py"), "--size", str(size), "--tilts", str(tilts),
                   "--real-nst", "--device", device, "--json", str(out)] + ([] if loop else ["--no-loop"])
            try:
                subprocess.run(cmd + ([] if inputs is None else ["--inputs", str(inputs)]), check=True)
            finally:
                if inputs is not None:
                    shutil.rmtree(inputs, ignore_errors=True)
            row = json.loads(out.read_text())
        row.pop("machine", None)
        rows.append(row)
        against = (f"against {row['in_process_tilts_per_second']:.2f} in process ({row['engine_over_in_process']:.0%}); "
                   f"actor NST {row['actor_nst_over_in_process']:.2f}x the loop's time; " if loop else "")
        inside = list(row.get("phase_seconds", {}).values())
        warm = [{k: v for k, v in w.items() if k != "pid"} for w in row.get("actor_warm_up_seconds") or []]
        print(f"engine {tilts} x {size}^2: {row['tilts_per_second']:.2f} tilts/s {against}"
              f"NST stage {row['nst_stage_seconds']:.1f} s, run {row['run_seconds']:.1f} s "
              f"({_seconds([row.get('stage_seconds', {})])}; inside: {_seconds(inside)}; "
              f"actors' start: {'; '.join(_seconds([w]) for w in warm)}; "
              f"tilts whose style targets were made ahead: {row.get('style_gram_tilts_ahead', 0)}, "
              f"in the driver: {row.get('style_gram_tilts_made_in_driver', 0)})", flush=True)
        timeline = dict(row.get("ray_start_timeline") or {})
        workers = timeline.pop("worker_processes", "?")
        print(f"  Ray's processes first logged, seconds after the driver asked: {_seconds([timeline])}; "
              f"Python workers Ray started: {workers}", flush=True)
        print(f"  {_timeline(row.get('run_timeline') or {})}", flush=True)
        cpu = [p for p in (row.get("phase_cpu_seconds") or {}).values() if p]
        if cpu:  # against the wall seconds inside: how many cores each phase kept busy
            where = "processes" if row.get("tilt_processes") else "threads"
            print(f"  CPU seconds of their processes, all threads: {_seconds(cpu)} (the noise model's and "
                  f"the driver's prepare's tilts in {where})", flush=True)
        if not loop:
            cache = row.get("page_cache") or {}
            print(f"  inputs in {row.get('inputs') or 'the store folder'}; page cache (GB): "
                  + ", ".join(f"{k} {v}" for k, v in cache.items()), flush=True)
    return rows


def _timeline(line: dict) -> str:
    """A run's timeline (the engine summary's ``timeline``) in words: seconds after it began."""
    parts = [f"prepared beside the start {line['prepared_beside_start']:.1f}"] if "prepared_beside_start" in line else []
    if "attrs_written" in line:  # beside the NST, which does not wait for them
        parts.append(f"its attributes written {line['attrs_written']:.1f}")
    if "driver_targets" in line:
        parts.append("style targets in the driver {:.1f}-{:.1f}".format(*line["driver_targets"]))
    for a in line.get("actors") or []:
        parts.append(f"actor {a.get('pid')}: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}"
                                                            for k, v in a.items() if k != "pid"))
    return "timeline, seconds after the run began: " + ("; ".join(parts) or "none")


def resting_inputs(size: int, tilts: int, shm: Path = Path("/dev/shm")) -> Path | None:
    """A folder in ``shm`` (RAM) for a whole run's inputs, where it has room for them twice over;
    None otherwise (they go beside the store). A user's inputs are at rest when a run starts:
    written to the disk just before it, the benchmark's 8 GB at 61 x 4096^2 would still be
    dirty page cache, and the store's writes would meet the kernel's writeback throttle
    sooner (``page_cache`` in the row says how close they came)."""
    import shutil

    need = 2 * tilts * size * size * 4  # the noiseless tilts and the reference, float32
    try:
        free = shutil.disk_usage(shm).free
    except OSError:
        return None
    return shm / f"faket-bench-inputs-{os.getpid()}" if free > 2 * need else None


def _dirty(cache: dict) -> str:
    """A run's dirty page cache at its start and its peak (GB), against the throttle's ratio."""
    if not cache:
        return "-"
    return (f"{cache['dirty_gb_start']:.1f}, {cache['dirty_gb_peak']:.1f} (throttle from "
            f"{cache.get('dirty_ratio', '?')}% of {cache['mem_total_gb']:.0f})")


def _seconds(parts: list[dict]) -> str:
    """``name seconds`` pairs of several dicts, one line."""
    return ", ".join(f"{k} {v:.1f}" for p in parts for k, v in p.items())


def published_vs_faket(device: str, size: int, tilts: int) -> list[dict] | None:
    """With FAKET_PUBLISHED (a checkout of the published code): both whole commands on the same
    series (``benchmarks/published.py``); None without it."""
    checkout = os.environ.get("FAKET_PUBLISHED")
    if not checkout:
        print("published: FAKET_PUBLISHED not set, not compared", flush=True)
        return None
    from published import compare

    row = compare(Path(checkout), size, tilts, device, modes=("float32", "bf16"))
    print(f"published {tilts} x {size}^2: {row['published_seconds']:.1f} s, faket {row['faket_seconds']:.1f} s "
          f"(x{row['published_over_faket']:.2f}), max abs {row['max_abs_vs_published']:.3g}", flush=True)
    for mode, d in row["deviation_by_mode"].items():
        print(f"  faket --precision {mode}: {row['seconds_by_mode'][mode]:.1f} s, max abs vs published "
              f"{d['max']:.3g}, mean {d['mean']:.3g}", flush=True)
    return [row]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# GPU benchmark: {m.get('gpu', m['cpu'])} ({result['created']}, torch {m['torch']})", "",
             "| size | precision | s/tilt | peak GB | model GB | peak / model |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['height']}x{r['width']} | {r['precision']} | {r['seconds_per_tilt']:.3f} | "
              f"{r['peak_memory_gb']:.1f} | {r['predicted_memory_gb']:.1f} | {r['peak_over_predicted']:.2f} |"
              for r in result.get("per_tilt", [])]
    if result.get("layout"):
        lines += ["", "| size | layout | s/tilt | max abs vs nchw |", "|---|---|---|---|"]
        lines += [f"| {r['size']} | {r['layout']} | {r['seconds_per_tilt']:.3f} | "
                  f"{r.get('max_abs_vs_nchw', 0):.3g} |" for r in result["layout"]]
    if result.get("deviation"):
        lines += ["", "| precision | max abs vs float32 | mean | 99.9th pct |", "|---|---|---|---|"]
        lines += [f"| {r['precision']} | {r['max_abs_vs_float32']:.3g} | {r['mean_abs_vs_float32']:.3g} | "
                  f"{r['p999_abs_vs_float32']:.3g} |" for r in result["deviation"]]
    for p in result.get("profile") or []:
        frac = "n/a" if p["network_fraction"] is None else f"{p['network_fraction']:.1%}"
        comp = p.get("network_fraction_of_compute")
        lines += ["", f"Network kernels ({p['tilts']} tilts of {p['size']}^2, {p['precision']}): {frac} of "
                  f"{p['gpu_ms']:.0f} ms GPU time; {comp:.1%} of the {p['gpu_ms'] - p['transfer_ms']:.0f} ms "
                  f"without host<->device copies; wall {p['wall_ms']:.0f} ms."]
    if result.get("experiments"):
        lines += ["", "| size | variant | s/tilt | max abs vs published arithmetic |", "|---|---|---|---|"]
        lines += [f"| {r['size']} | {r['variant']} | {r['seconds_per_tilt']:.3f} | {r['max_abs_vs_published']:.3g} |"
                  for r in result["experiments"]]
    if result.get("engine"):
        lines += ["", "| engine | tilts/s | in process | engine / in process | actor NST / in process | "
                  "NST stage s | run s |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {e['tilts']} x {e['size']}^2 | {e['tilts_per_second']:.2f} | "
                  f"{e['in_process_tilts_per_second']:.2f} | {e['engine_over_in_process']:.0%} | "
                  f"{e['actor_nst_over_in_process']:.2f} | {e['nst_stage_seconds']:.1f} | {e['run_seconds']:.1f} |"
                  for e in result["engine"]]
    if result.get("end_to_end"):
        lines += ["", "| whole run | seconds | NST stage s | NST tilts/s | style targets ahead (in the driver) | "
                  "inputs | dirty GB at start, peak |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {e['tilts']} x {e['size']}^2 | {e['run_seconds']:.1f} | {e['nst_stage_seconds']:.1f} | "
                  f"{e['tilts_per_second']:.2f} | {e.get('style_gram_tilts_ahead', 0)} "
                  f"({e.get('style_gram_tilts_made_in_driver', 0)}) | {e.get('inputs') or 'beside the store'} | "
                  f"{_dirty(e.get('page_cache') or {})} |" for e in result["end_to_end"]]
    lines += [f"\nRun of {e['tilts']} x {e['size']}^2, wall seconds per stage: "
              + ", ".join(f"{k} {v:.1f}" for k, v in e["stage_seconds"].items())
              + "".join(f"; {stage} inside: " + ", ".join(f"{k} {v:.1f}" for k, v in p.items())
                        for stage, p in e.get("phase_seconds", {}).items() if p)
              + "".join(f"; {stage}'s CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in p.items())
                        for stage, p in (e.get("phase_cpu_seconds") or {}).items() if p)
              + f"; {_timeline(e.get('run_timeline') or {})}"
              for e in (result.get("engine") or []) + (result.get("end_to_end") or []) if e.get("stage_seconds")]
    for r in result.get("published") or []:
        lines += ["", f"Published command against `faket stylize`, whole commands, {r['tilts']} x {r['size']}^2: "
                  f"{r['published_seconds']:.1f} s against {r['faket_seconds']:.1f} s "
                  f"(x{r['published_over_faket']:.2f}); |faket - published| max {r['max_abs_vs_published']:.3g}, "
                  f"mean {r['mean_abs_vs_published']:.3g}, 99.9th pct {r['p999_abs_vs_published']:.3g}."]
        if r.get("deviation_by_mode"):
            lines += ["", "| faket --precision | whole command s | max abs vs published | mean | 99.9th pct |",
                      "|---|---|---|---|---|"]
            lines += [f"| {m} | {r['seconds_by_mode'][m]:.1f} | {d['max']:.3g} | {d['mean']:.3g} | {d['p999']:.3g} |"
                      for m, d in r["deviation_by_mode"].items()]
    lines += ["", f"The whole benchmark: {result['seconds']:.0f} s."] if "seconds" in result else []
    lines += ["", f"Errors: {result['errors']}" if result["errors"] else ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1024^2 and 2048^2 only")
    ap.add_argument("--skip", default="", help="comma list of parts to leave out: per_tilt, engine, end_to_end, profile, deviation, published")
    ap.add_argument("--with", dest="extra", default="", help="comma list of studies to add: experiments, layout")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    ap.add_argument("--sizes", default="", help="comma list of square sizes for the per-tilt part (e.g. 2048,4096)")
    ap.add_argument("--modes", default="", help="comma list of precision modes for the per-tilt part")
    ap.add_argument("--engine", default="1024x41", help="engine runs against the loop, SIZExTILTS comma list "
                    "(e.g. 1024x41,4096x11: 4096^2 is 40 s more; the end-to-end run is at 4096^2)")
    ap.add_argument("--end-to-end", default="4096x61", help="whole engine runs without the loop, SIZExTILTS list")
    ap.add_argument("--smoke-cpu", action="store_true", help="tiny sizes on the CPU: checks the script only")
    args = ap.parse_args()
    device, skip = "cuda", set(args.skip.split(",")) | (OPTIONAL - set(args.extra.split(",")))
    if args.smoke_cpu:
        device, SIZES[:], args.engine, args.end_to_end = "cpu", [(64, 64), (96, 80)], "32x3", "32x4"
    elif not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device here; `python benchmarks/run.py` measures the CPU")
    if args.sizes:  # 2048 or 4092x5760
        SIZES[:] = [(int(n.partition("x")[0]), int(n.partition("x")[2] or n)) for n in args.sizes.split(",")]
    if args.modes:
        MODES[:] = args.modes.split(",")
    began = time.perf_counter()
    result: dict = {"machine": machine_info(device), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "errors": {}}
    parts = [("per_tilt", lambda: per_tilt(SIZES[:2] if args.quick else SIZES, device)),
             ("engine", lambda: engine_vs_in_process(
                 device, [(int(a), int(b)) for a, b in (r.split("x") for r in args.engine.split(","))])),
             ("end_to_end", lambda: engine_vs_in_process(
                 device, [(int(a), int(b)) for a, b in (r.split("x") for r in args.end_to_end.split(","))], loop=False)),
             ("profile", lambda: [network_fraction(device, h) for h, w in SIZES[1:3] if h == w]),
             ("experiments", lambda: experiments(device, max(h for h, w in SIZES[:3] if h == w))),
             ("deviation", lambda: deviations(device, SIZES[0][0])),
             ("layout", lambda: layouts(device, [h for h, _ in SIZES[1 : 2 if args.quick else 3]])),
             ("published", lambda: published_vs_faket(device, 64 if args.smoke_cpu else 4096,
                                                      3 if args.smoke_cpu else 11))]
    gpu = result["machine"].get("gpu", "cpu-smoke")
    name = re.sub(r"[^a-z0-9]+", "", gpu.lower().replace("nvidia", ""))
    out = args.out_dir / f"gpu-{name}-{time.strftime('%Y%m%d')}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for key, part in parts:
        if key in skip:
            continue
        try:
            result[key] = part()
        except Exception as e:  # a part that fails is recorded; the others still run
            result["errors"][key] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        result["seconds"] = round(time.perf_counter() - began, 1)  # the whole benchmark so far (target: 360)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        if device == "cuda":  # what a part's tensors held goes back: the published command and the
            gc.collect()      # engine's actor are other processes on the same GPU
            torch.cuda.empty_cache()
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"-> {out}.json, {out}.md")


if __name__ == "__main__":
    main()
