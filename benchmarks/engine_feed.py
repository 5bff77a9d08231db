"""The engine's data path alone: tilts per second with the NST replaced by the identity.

usage: python benchmarks/engine_feed.py --size N --tilts T [--kernel-seconds S] [--json OUT]
       python benchmarks/engine_feed.py --size 256 --tilts 12 --real-nst [--device cuda] [--json OUT]

A ready noiseless tilt-series of T random N x N tilts goes through a local Ray
engine with one actor: prepare (noise), then the NST stage with the identity
kernel (``FAKET_ENGINE_KERNEL=identity``: the actor reads CONTENT, NOISY and
the style tilts from the run store and writes NOISY back as the result), so
the figure is what reading, scheduling and writing allow. ``tilts_per_second``
is the NST stage's (done tilts over its seconds, from the run summary).

With ``--kernel-seconds S`` the identity comes after S seconds per tilt that hold
no CPU (``sleep:S``), a GPU's NST time: ``kernel_busy`` is the share of the NST
stage such a device computes (the H100's S: 0.030 at 1024^2, 0.374 at 4096^2),
a CPU proxy of the engine over the in-process loop. ``--kernel spin`` spends the
S seconds in Python, holding its lock, as a thread launching small GPU kernels does;
``--kernel launch`` spends them as tiny torch ops (as many as take S seconds in this
process alone), each letting go of the lock and taking it back, as a GPU NST's
launching thread does: ``actor_kernel_over_in_process`` is the actor's time for them over
this process's, and ``launch_thread_seconds`` splits the actor thread's time into on a CPU,
waiting for one, and blocked (on Python's lock: what the actor's reading and writing
threads cost the NST, without a GPU).

With ``--real-nst`` the NST is real and the same stacks are also stylised by a
plain in-process loop (``faket.nst.stylize_stack``, one thread per actor CPU,
or the same GPU with ``--device cuda``); ``engine_over_in_process`` is the
engine's throughput over the loop's, ``actor_nst_over_in_process`` the actor's
mean NST seconds per tilt over the loop's. ``--no-loop`` leaves the loop out: the
engine's whole run alone (``run_seconds``, ``stage_seconds``), e.g. 61 x 4096^2.

``page_cache`` gives the kernel's dirty page cache when the run began and its peak (and
the peak under writeback) during it, with the memory and the writeback ratios: writers are
throttled as dirty pages near ``dirty_ratio`` of the memory, and inputs written just before
the run count towards it (``--inputs`` in /dev/shm keeps them out: inputs at rest).

``--fake-gpu`` declares one GPU to a local Ray started first, the actor computing on the CPU:
the engine's path for GPU actors (started before the prepare stage, making the first
tomogram's style targets while it waits: ``style_gram_tilts_ahead``) on a machine without
one; ``--no-style-ahead`` turns that off, to measure what it gains
(``benchmarks/results/style-ahead-cpu-vm.json``). On a GPU host the driver makes those targets
on the GPU while Ray and the actor start (``style_gram_tilts_made_in_driver``);
``--no-driver-ahead`` leaves them to the actor. A mean actor NST over the loop counts the
targets made ahead as the actor's NST work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def write_inputs(
    folder: Path,
    size: int,
    tilts: int,
    batch: int | None = None,
    device: str = "cpu",
    data: Path | None = None,
    gpus_per_actor: float | None = None,
) -> Path:
    """Random noiseless tilts, a reference (those tilts with Gaussian noise: the noise model's pair
    and the style) and a spec with one tomogram; returns the spec. Two files of ``tilts`` x
    ``size``^2 float32: at 61 x 4096^2 their writing is most of a run's set-up.
    data: the folder of the inputs (the spec and the store stay in ``folder``), where the files
    written by an earlier call for the same size and tilts are used again. gpus_per_actor: the
    actor's ``[resources]`` GPUs (with ``device = "cpu"``: a GPU declared to Ray, see --fake-gpu)."""
    from bench_core import random_stack

    from faket.io import angles_range, write_mrc, write_tlt

    data = (data or folder).resolve()
    for f in {folder, data}:
        f.mkdir(parents=True, exist_ok=True)
    made = data / f"inputs-{tilts}x{size}.done"  # written last: the files before it are whole
    if not made.exists():
        for other in data.glob("inputs-*.done"):  # another size's files: about to be replaced
            other.unlink()
        theta = angles_range(-60, 60, 120 / max(1, tilts - 1))[:tilts]
        write_tlt(data / "angles.tlt", theta)
        clean = random_stack(tilts, size, size, 0)
        write_mrc(data / "noiseless.mrc", clean)
        clean += 0.5 * random_stack(tilts, size, size, 1, normal=True)
        write_mrc(data / "reference.mrc", clean)
        made.touch()
    spec = folder / "feed.toml"
    batch_line = "" if batch is None else f"batch = {batch}"
    if gpus_per_actor is not None:
        batch_line += f"\ngpus_per_actor = {gpus_per_actor}"
    spec.write_text(
        f"""[run]
store = "run.zarr"

[resources]
actors = 1
device = "{device}"
{batch_line}

[weights]
vgg = "random"

[noise]
pairs = [{{reference = "{data}/reference.mrc", noiseless = "{data}/noiseless.mrc"}}]

[style]
reference = "{data}/reference.mrc"

[[tomogram]]
name = "feed"
tilts = "{data}/noiseless.mrc"
angles = "{data}/angles.tlt"
"""
    )
    return spec


def _calibrated_ops(seconds: float) -> tuple[int, float]:
    """How many tiny torch ops (``cluster._hooks.launches``) take ``seconds`` in this process
    alone, with the actor's one torch thread; returns (ops, seconds per op, best of 5)."""
    import torch

    from faket_cluster._hooks import launches

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    launches(2000)  # warm-up
    per_op = min(launches(20000) / 20000 for _ in range(5))
    torch.set_num_threads(threads)
    return max(1, round(seconds / per_op)), per_op


def _launch_thread(log: Path) -> dict:
    """The actor's launching thread over all its kernels: wall, on a CPU, waiting for a CPU, and
    the rest, blocked (on Python's lock, which its reading and writing threads hold)."""
    wall, cpu, queued = np.loadtxt(log, ndmin=2).sum(axis=0)
    log.unlink()
    log.parent.rmdir()
    return {"wall": wall, "cpu": cpu, "runqueue": queued, "blocked": wall - cpu - queued}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tilts", type=int, default=16)
    ap.add_argument("--batch", type=int, default=None, help="tilts per task (resources.batch; default: the engine's choice)")
    ap.add_argument("--kernel-seconds", type=float, default=0.0,
                    help="the identity after this many seconds per tilt, holding no CPU: a GPU's NST time")
    ap.add_argument("--kernel", choices=["sleep", "spin", "launch"], default="sleep",
                    help="how the kernel seconds pass: asleep, spinning in Python holding its lock, or "
                    "as tiny torch ops that each let go of the lock and take it back (a thread launching "
                    "small GPU kernels)")
    ap.add_argument("--real-nst", action="store_true", help="the real NST, against an in-process loop")
    ap.add_argument("--no-loop", action="store_true",
                    help="with --real-nst: the engine alone, without the in-process loop (a whole run's seconds)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--inputs", type=Path, default=None,
                    help="a folder for the inputs, kept and used again by later runs of the same size and "
                    "tilts (the store stays in a temporary folder): e.g. in /dev/shm, while the store is on disk")
    ap.add_argument("--fake-gpu", action="store_true",
                    help="one GPU declared to a local Ray, the actor computing on the CPU: the engine's "
                    "path for GPU actors (started before the prepare stage) on a machine without one")
    ap.add_argument("--no-style-ahead", action="store_true",
                    help="early actors make no style targets while they wait (to measure what that gains)")
    ap.add_argument("--no-driver-ahead", action="store_true",
                    help="the driver makes no style targets beside Ray's start on a GPU it sees: the "
                    "actor makes them all (to measure what the driver's part gains)")
    ap.add_argument("--tilt-processes", choices=["auto", "0", "1"], default="auto",
                    help="the driver's noise model and prepare make their tilts in processes (1) or "
                    "threads (0); auto: processes from faket._procs.PROCESS_MIN cores on")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from faket._procs import PROCESSES_ENV

    if args.tilt_processes != "auto":
        os.environ[PROCESSES_ENV] = args.tilt_processes
    if args.no_style_ahead:
        from faket_cluster._hooks import NO_AHEAD_ENV

        os.environ[NO_AHEAD_ENV] = "1"
    if args.no_driver_ahead:
        from faket_cluster._hooks import NO_DRIVER_AHEAD_ENV

        os.environ[NO_DRIVER_AHEAD_ENV] = "1"
    ops, op_seconds, launch_log = 0, 0.0, Path(os.devnull)
    if not args.real_nst:
        kernel = f"{args.kernel}:{args.kernel_seconds}" if args.kernel_seconds else "identity"
        if args.kernel == "launch" and args.kernel_seconds:
            ops, op_seconds = _calibrated_ops(args.kernel_seconds)
            kernel = f"launch:{ops}"
            launch_log = Path(tempfile.mkdtemp()) / "launches.txt"
            os.environ["FAKET_ENGINE_LAUNCH_LOG"] = str(launch_log)
        os.environ["FAKET_ENGINE_KERNEL"] = kernel  # the local Ray's workers inherit it
    import ray
    import torch
    from bench_core import PageCache, emit, machine_info, ray_start_timeline

    from faket.nst import StyleTransfer, stylize_stack
    from faket.store import open_store
    from faket.weights import random_state_dict
    from faket_cluster.engine import run
    from faket_cluster.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        spec = write_inputs(Path(tmp), args.size, args.tilts, args.batch, args.device, args.inputs,
                            1 if args.fake_gpu else None)
        began = time.time()
        if args.fake_gpu:  # Ray started here (so no noise model or prepare beside its start)
            from faket_cluster.ray_setup import init_ray

            init_ray(num_cpus=len(os.sched_getaffinity(0)), num_gpus=1)
        with PageCache() as cache:  # whether the store's writes met the kernel's writeback throttle
            summary = run(load_spec(spec), say=lambda m: print(m, file=sys.stderr))
        # when Ray's processes came up, after the driver asked for them (a local Ray only)
        inside = summary["phase_seconds"]["start"]
        asked = began + inside.get("weights", 0.0) + inside.get("layout", 0.0)
        node = ray._private.worker._global_node  # None where the run joined a running cluster
        # (none where the benchmark started Ray itself, before the run: --fake-gpu)
        started_here = node is not None and not args.fake_gpu
        timeline = ray_start_timeline(node.get_session_dir_path(), asked) if started_here else {}
        ray.shutdown()
        result = {
            "size": args.size,
            "tilts": args.tilts,
            "kernel": "nst" if args.real_nst else "identity",
            "batch": args.batch,
            "nst_tasks": summary["nst_tasks"],
            "tilts_per_second": summary["tilts_per_second"],
            "nst_stage_seconds": summary["nst_seconds"],
            "run_seconds": summary["seconds"],
            "stage_seconds": summary["stage_seconds"],
            "phase_seconds": summary["phase_seconds"],
            # the same phases' CPU seconds in their processes (whether they kept the cores busy)
            "phase_cpu_seconds": summary["phase_cpu_seconds"],
            "noise_model_beside_start": summary["noise_model_beside_start"],
            # whether those made their tilts in processes (else threads; faket._procs)
            "tilt_processes": summary["tilt_processes"],
            "input_read_seconds": summary["input_read_seconds"],
            "input_wait_seconds": summary["input_wait_seconds"],
            "actor_warm_up_seconds": summary["actor_warm_up_seconds"],
            "style_gram_tilts_ahead": summary["style_gram_tilts_ahead"],
            # of them, made in the driver on the GPU while Ray and the actor started
            "style_gram_tilts_made_in_driver": summary["style_gram_tilts_made_in_driver"],
            "ray_start_timeline": timeline,
            # seconds after the run began: the first tomogram prepared, each actor's start
            "run_timeline": summary["timeline"],
            # the inputs' folder (None: beside the store, on the same file system)
            "inputs": None if args.inputs is None else str(args.inputs),
            "page_cache": cache.figures(),
        }
        if args.kernel_seconds and not args.real_nst:
            result["kernel"] = args.kernel
            # the share of the run's NST stage a device of this speed would compute: what the
            # engine keeps busy (1.0 = every read and write hidden behind the kernel)
            result["kernel_seconds"] = args.kernel_seconds
            result["kernel_busy"] = args.tilts * args.kernel_seconds / summary["nst_seconds"]
        if ops:
            # the actor's time per tilt for the ops over theirs in this process alone: what its
            # launching thread loses to its reading and writing threads (the H100's NST at 1024^2:
            # 1.19, gpu-h100-20261126g)
            result["kernel_ops"] = ops
            result["kernel_in_process_seconds"] = ops * op_seconds
            per_tilt = summary["compute_seconds"] / args.tilts
            result["actor_kernel_over_in_process"] = per_tilt / (ops * op_seconds)
            result["launch_thread_seconds"] = _launch_thread(launch_log)
        # the style targets an early actor made while it waited count as its NST work too
        ahead_s = sum(w.get("style_ahead", 0.0) for w in summary["actor_warm_up_seconds"] or [])
        if args.real_nst:
            result["actor_compute_seconds"] = summary["compute_seconds"] + ahead_s
        if args.real_nst and not args.no_loop:
            g = open_store(Path(tmp) / "run.zarr", mode="r")["feed"]
            c, i, s = (np.asarray(g[k][:]) for k in ("content", "noisy", "style"))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as the actor (1 CPU)
            t = StyleTransfer(random_state_dict(0), device=args.device)
            if args.device == "cuda":  # warm-up, as the actor's first task was (cuDNN handles, allocator)
                stylize_stack(c[:1], [s[:1]], i[:1], t)
            start = time.perf_counter()
            stylize_stack(c, [s], i, t)
            if args.device == "cuda":
                torch.cuda.synchronize()
            loop = time.perf_counter() - start
            torch.set_num_threads(threads)
            result["in_process_tilts_per_second"] = args.tilts / loop
            result["engine_over_in_process"] = summary["tilts_per_second"] / result["in_process_tilts_per_second"]
            result["actor_nst_over_in_process"] = result["actor_compute_seconds"] / loop
    result["device"] = args.device
    result["machine"] = machine_info(args.device)
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    emit(result, args.json)


if __name__ == "__main__":
    main()
