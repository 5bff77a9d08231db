"""Helpers shared by the benchmark scripts: machine info, timing, memory, device peaks."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import time
from pathlib import Path

import numpy as np
import torch

#: Dense (non-sparse) datasheet peaks in TFLOP/s: FP32 on CUDA cores, TF32 on tensor cores.
GPU_PEAKS_TFLOPS = {
    "H200": {"fp32": 67.0, "tf32": 494.7},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0},
    "H100": {"fp32": 67.0, "tf32": 494.7},          # SXM
    "A100": {"fp32": 19.5, "tf32": 156.0},
}


def random_stack(tilts: int, height: int, width: int, seed: int, normal: bool = False) -> np.ndarray:
    """Random float32 tilts ``(tilts, height, width)``, uniform in [0, 1) or standard normal, one
    generator per tilt (seeds spawned from ``seed``) filled on threads: numpy draws without Python's
    lock, so a 61 x 4096^2 stack takes a core's time for one tilt on a many-core machine."""
    from faket._threads import for_each

    out = np.empty((tilts, height, width), np.float32)
    gens = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(tilts)]

    def fill(k: int) -> None:
        if normal:
            gens[k].standard_normal(dtype=np.float32, out=out[k])
        else:
            gens[k].random(dtype=np.float32, out=out[k])

    for_each(fill, range(tilts), workers=os.cpu_count() or 1)
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    """Start a new peak: GPU allocator stats, or the process's RSS high-water mark (Linux)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                 # resets VmHWM to the current RSS
    except OSError:
        pass


def peak_memory_mb(device: str) -> float:
    """Peak since the last :func:`reset_peak_memory`: GPU max allocated, or process RSS (VmHWM)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_call(fn, device: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def cpu_peak_gflops() -> float | None:
    """Dense FP32 peak estimate: cores x clock x 32 (two AVX2 FMA units, 8 lanes, 2 FLOPs)."""
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("cpu MHz")]
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    if not mhz:
        return None
    lanes = 16 if " avx512f" in flags else 8
    return torch.get_num_threads() * max(mhz) / 1000 * lanes * 2 * 2


def gpu_peak_tflops(name: str) -> dict | None:
    """Datasheet dense peaks of a GPU named like ``torch.cuda.get_device_name`` (None if unknown)."""
    for key, peaks in GPU_PEAKS_TFLOPS.items():
        if key in name:
            return peaks
    return None


def machine_info(device: str) -> dict:
    info = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_peak_tflops"] = gpu_peak_tflops(info["gpu"])
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    if names:
        info["cpu"] = names[0]
    info["cpu_cores"] = physical_cores(cpuinfo)
    return info


def physical_cores(cpuinfo: str) -> int | None:
    """The physical cores in ``/proc/cpuinfo``'s text (distinct physical id and core id): fewer
    than the CPU threads where each core runs two; None where the text does not say."""
    cores, physical = set(), "0"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            physical = value.strip()
        elif key.strip() == "core id":
            cores.add((physical, value.strip()))
    return len(cores) or None


#: Ray's start, read from its session's logs: (event, log file pattern, text on the line or "").
RAY_START_EVENTS = (
    ("gcs", "gcs_server.out", ""),
    ("raylet", "raylet.out", ""),
    ("runtime_env_agent", "runtime_env_agent.log", ""),
    ("dashboard_agent", "dashboard_agent.log", ""),
    ("raylet_registered", "raylet.out", "Raylet of id"),
    ("driver", "python-core-driver-*.log", ""),
    ("first_worker", "python-core-worker-*.log", ""),
)
_LOG_TIME = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


def ray_start_timeline(session_dir: str | Path, since: float) -> dict[str, float]:
    """When each of Ray's processes first logged (``RAY_START_EVENTS``), in seconds after
    ``since`` (a ``time.time()``: when the driver asked Ray to start); events not found are left
    out. Where a pattern matches several files (workers), the earliest. ``worker_processes``: how
    many Python workers Ray started in all (a count, not seconds)."""
    logs = Path(session_dir) / "logs"
    found: dict[str, float] = {}
    for event, pattern, text in RAY_START_EVENTS:
        times = [t for f in logs.glob(pattern) if (t := _first_logged(f, text)) is not None]
        if times:
            found[event] = round(min(times) - since, 3)
    # each Python worker process Ray started (prestarted idle ones too) logs to a file of its own:
    # on a many-core machine they all import Ray beside the run's own start
    found["worker_processes"] = len(list(logs.glob("python-core-worker-*.log")))
    return found


def _first_logged(path: Path, text: str) -> float | None:
    """The local time (epoch seconds) of the first line of a Ray log holding ``text``."""
    try:
        with path.open(errors="replace") as f:
            for line in f:
                m = _LOG_TIME.match(line)
                if m and text in line:
                    whole = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
                    return whole + int(m.group(2)) / 1000
    except OSError:
        return None
    return None


class PageCache:
    """The kernel's dirty and under-writeback page cache while a block runs, sampled from
    /proc/meminfo every ``every`` seconds in a thread (Linux; elsewhere ``figures()`` is empty).
    Writers are throttled once dirty pages near ``dirty_ratio`` of the memory: a benchmark's
    fresh inputs count towards that too.

    with PageCache() as cache: ...; cache.figures() -> {dirty_gb_start, dirty_gb_peak,
    writeback_gb_peak, dirty_background_ratio, dirty_ratio, mem_total_gb}"""

    def __init__(self, every: float = 0.1) -> None:
        import threading

        self.every, self.peaks, self.start = every, {"Dirty": 0.0, "Writeback": 0.0}, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="page-cache", daemon=True)

    @staticmethod
    def meminfo() -> dict[str, float]:
        """/proc/meminfo's figures in GB ({} where there is none)."""
        try:
            lines = Path("/proc/meminfo").read_text().splitlines()
        except OSError:
            return {}
        return {k: int(v.split()[0]) / 1e6 for k, _, v in (ln.partition(":") for ln in lines) if v.strip()}

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            now = self.meminfo()
            for k in self.peaks:
                self.peaks[k] = max(self.peaks[k], now.get(k, 0.0))

    def __enter__(self) -> "PageCache":
        self.start = self.meminfo()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict[str, float]:
        if not self.start:
            return {}
        ratios = {}
        for name in ("dirty_background_ratio", "dirty_ratio"):
            with contextlib.suppress(OSError, ValueError):
                ratios[name] = int(Path(f"/proc/sys/vm/{name}").read_text())
        return {"dirty_gb_start": round(self.start.get("Dirty", 0.0), 3),
                "dirty_gb_peak": round(self.peaks["Dirty"], 3),
                "writeback_gb_peak": round(self.peaks["Writeback"], 3),
                **ratios, "mem_total_gb": round(self.start.get("MemTotal", 0.0), 1)}


def refuse(script: str, why: str) -> None:
    """A benchmark's bad input: one line naming the script, exit 2, before any work."""
    import sys

    print(f"{script}: {why}", file=sys.stderr)
    sys.exit(2)


def emit(result: dict, path: Path | None) -> None:
    """Print a benchmark's JSON result and, given a path, write it there (folders made)."""
    import json

    text = json.dumps(result, indent=1)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
