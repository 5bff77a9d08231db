"""The Ray engine: per-tomogram preparation tasks, per-tilt NST tasks on actors, a Zarr store.

The driver never moves image data: tasks carry (store path, tomogram, tilt
indices) and return small metadata. Actors load VGG-19 once; the weights
are resolved once by the driver and shipped through Ray's object store, so
compute nodes need no internet. Each tilt has one writer (its own shard) and
is marked done after its data is written, so a rerun of the same spec does
only what is missing, whatever the number of actors or the order of
completion. The method itself lives in :mod:`faket`.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import ray

from faket.errors import FaketInputError

from .spec import RunSpec, TomogramSpec

#: Test hook: when this file names a path that does not exist yet, the first NST
#: task creates it and kills its actor process hard (os._exit) before writing.
CRASH_ONCE_ENV = "FAKET_TEST_CRASH_ONCE"
#: Test hook: "tomogram:tilt" of a tilt whose task always raises.
FAIL_TILT_ENV = "FAKET_TEST_FAIL_TILT"


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RunFailed(RuntimeError):
    """A tilt kept failing; the message names the tomogram and the tilt."""


# --------------------------------------------------------------------------- Ray setup
def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to a cluster (address, or RAY_ADDRESS inside `ray job submit`) or start a local one.

    A local Ray binds to 127.0.0.1, has no dashboard and a small object store.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=False)
    else:
        # Ray swaps 127.0.0.1 for the host's routable address unless "clusters" are off
        # (its switch for laptops); a local engine serves no other host, so turn them off.
        os.environ[LOOPBACK_ENV] = "0"
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        # "local": always a new instance, never a stale one from /tmp/ray/ray_current_cluster
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 log_to_driver=False,
                 object_store_memory=256 * 2**20, _node_ip_address="127.0.0.1")


def _remote_functions():
    @ray.remote(num_cpus=1, max_retries=3)
    def prepare(store: str, tomo: TomogramSpec, model_json: dict, content_sigma: float) -> dict:
        return prepare_tomogram(store, tomo, model_json, content_sigma)

    @ray.remote(num_cpus=1, max_retries=2)
    def estimate(pairs: list, order: int) -> dict:
        from faket.io import open_mrc
        from faket.noise import NoiseModel

        stacks = [(open_mrc(r, role="reference"), open_mrc(c, role="noiseless")) for r, c in pairs]
        model = NoiseModel.estimate([(a.data, b.data) for a, b in stacks], order,
                                    [{"reference": str(r), "noiseless": str(c)} for r, c in pairs])
        return model.to_json()

    @ray.remote(num_cpus=1, max_retries=2)
    def reconstruct_task(store: str, name: str, settings, angles: list) -> list:
        from faket.reconstruction import reconstruct
        from faket.store import ensure_volume, open_store

        g = open_store(store)[name]
        vol = reconstruct(np.asarray(g["faket"][:]), np.asarray(angles), settings).numpy()
        arr = ensure_volume(g, "reconstruction", vol.shape)
        arr[:] = vol
        arr.attrs["voxel_size"] = float(g.attrs.get("voxel_size", 1.0)) * settings.binning
        return list(vol.shape)

    @ray.remote(num_cpus=1, max_retries=2)
    def export_task(store: str, out: str, names: list) -> list:
        from faket.store import export_store

        return [str(p) for p in export_store(store, out, names)]

    return prepare, estimate, reconstruct_task, export_task


def prepare_tomogram(store: str, tomo: TomogramSpec, model_json: dict, content_sigma: float) -> dict:
    """Write noiseless, NOISY, CONTENT and style tilts of one tomogram into the store (idempotent)."""
    from faket.io import open_mrc, read_tlt
    from faket.noise import NoiseModel, apply_tilt
    from faket.nst import stack_range
    from faket.projection import project
    from faket.store import done_mask, ensure_stack, ensure_volume, open_store, write_tilt

    root = open_store(store)
    g = root.require_group(tomo.name)
    angles = read_tlt(tomo.angles)
    n = len(angles)
    model = NoiseModel.from_json(model_json)
    if tomo.volume is not None:
        with open_mrc(tomo.volume, role="volume") as v:
            voxel = v.voxel_size[0] or 1.0
            shape = (n, v.shape[1], v.shape[2])
            ensure_stack(g, "noiseless", shape)
            if not done_mask(g, "noiseless").all():
                tilts = project(v.data, angles).numpy()
                for i in range(n):
                    write_tilt(g, "noiseless", i, tilts[i])
    else:
        with open_mrc(tomo.tilts, role="tilts") as t:
            voxel = t.voxel_size[0] or 1.0
            shape = t.shape
            ensure_stack(g, "noiseless", shape)
            todo = np.flatnonzero(~done_mask(g, "noiseless"))
            for i in todo:
                write_tilt(g, "noiseless", int(i), t.tilt(int(i)))
    base = model.baseline()
    for stage in ("noisy", "content"):
        ensure_stack(g, stage, shape)
        for i in np.flatnonzero(~done_mask(g, stage)):
            write_tilt(g, stage, int(i), apply_tilt(np.asarray(g["noiseless"][int(i)]), int(i), model,
                                                    tomo.seed, stage, content_sigma, base))
    with open_mrc(tomo.style, role="style") as st:
        ensure_stack(g, "style", st.shape)
        for i in np.flatnonzero(~done_mask(g, "style")):
            write_tilt(g, "style", int(i), st.tilt(int(i)))
    if tomo.labels is not None and "labels" not in g:
        with open_mrc(tomo.labels, role="labels") as lab:
            arr = ensure_volume(g, "labels", lab.shape)
            arr[:] = lab.read()
    attrs = {"angles": [float(a) for a in angles], "voxel_size": float(voxel), "seed": tomo.seed,
             "sources": {k: str(v) for k, v in (("volume", tomo.volume), ("tilts", tomo.tilts),
                                                ("style", tomo.style), ("angles", tomo.angles))
                         if v is not None},
             "ranges": {s: [float(x) for x in stack_range(g[s])] for s in ("content", "noisy", "style")}}
    if tomo.particles is not None:
        attrs["particles_csv"] = tomo.particles.read_text()
    g.attrs.update(attrs)
    ensure_stack(g, "faket", shape)
    return {"name": tomo.name, "n": n}


# --------------------------------------------------------------------------- actors
class NSTWorker:
    """Holds VGG-19 on its device; stylises tilts read from the store, writes them back.

    I/O overlaps compute: :meth:`prefetch` runs in the actor's own "io"
    thread (a Ray concurrency group), so the driver asks it to read the next
    queued task's inputs while the current one computes; within a task each
    tomogram's result is written by a writer thread while the next one
    computes, and the task returns only once its writes are done.
    """

    def __init__(self, weights: list, settings, use_gpu: bool, threads: int = 1, keep: int = 4) -> None:
        """weights: ``[ObjectRef of the state dict]``, kept alive by the driver for restarts;
        keep: tasks whose inputs are kept read ahead at most (more than the driver queues)."""
        import threading
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from faket.nst import StyleTransfer
        from faket.reproducible import compute_record

        torch.set_num_threads(max(1, threads))   # as many as the CPUs Ray gave this actor
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.transfer = StyleTransfer(ray.get(weights[0]), settings, device=self.device)
        self.compute = compute_record(self.device, settings.precision)
        self.pid = os.getpid()
        self.node = ray.get_runtime_context().get_node_id()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]      # what Ray assigned this actor
        self._lock = threading.Lock()
        self._prefetched: dict = {}        # task key -> {"done": Event, "data": inputs or None}
        self._taken: set = set()           # keys the compute thread read itself
        self._keep = keep
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="faket-write")

    @staticmethod
    def _read(store: str, names: list[str], tilts: list[int]) -> dict:
        """A task's inputs from the store: style tilts once, content and start per tomogram."""
        from faket.store import open_store

        root = open_store(store)
        first = root[names[0]]
        data = {"style": np.stack([np.asarray(first["style"][i]) for i in tilts]),
                "style_range": first.attrs["ranges"]["style"], "size": first["content"].shape[-2:],
                "members": {}}
        for name in names:
            g = root[name]
            data["members"][name] = {
                "ranges": g.attrs["ranges"],
                "content": np.stack([np.asarray(g["content"][i]) for i in tilts]),
                "noisy": np.stack([np.asarray(g["noisy"][i]) for i in tilts])}
        return data

    @ray.method(concurrency_group="io")
    def prefetch(self, store: str, names: list[str], tilts: list[int]) -> None:
        """Read a queued task's inputs in the io thread (best effort: errors surface in stylize)."""
        import threading

        key = (store, tuple(names), tuple(tilts))
        with self._lock:
            if key in self._taken:
                self._taken.discard(key)
                return
            if key in self._prefetched:
                return
            while len(self._prefetched) >= self._keep:   # stale: a task retried elsewhere
                self._prefetched.pop(next(iter(self._prefetched)))
            entry = self._prefetched[key] = {"done": threading.Event(), "data": None, "seconds": 0.0}
        t0 = time.perf_counter()
        try:
            entry["data"] = self._read(store, names, tilts)
            entry["seconds"] = time.perf_counter() - t0
        except Exception:
            pass
        finally:
            entry["done"].set()

    def _inputs(self, store: str, names: list[str], tilts: list[int]) -> tuple[dict, float, float]:
        """The task's inputs, prefetched or read now.

        Returns (inputs, seconds the compute thread waited for them, seconds
        the reading took wherever it ran; 0 wait with a positive read time =
        the read was hidden behind compute).
        """
        key = (store, tuple(names), tuple(tilts))
        t0 = time.perf_counter()
        with self._lock:
            entry = self._prefetched.pop(key, None)
            if entry is None:
                self._taken.add(key)
        data, read = None, 0.0
        if entry is not None:
            entry["done"].wait()
            data, read = entry["data"], entry["seconds"]
        if data is None:
            t1 = time.perf_counter()
            data = self._read(store, names, tilts)
            read = time.perf_counter() - t1
        return data, time.perf_counter() - t0, read

    def stylize(self, store: str, names: list[str], tilts: list[int]) -> dict:
        """Stylise ``tilts`` of every tomogram in ``names``; they share one style stack.

        The style tilts' Gram targets are computed once and serve every
        tomogram (bit for bit what each would compute alone). A tomogram whose
        tilts are all done already (a retry) is skipped; one that fails is
        reported in ``failed`` while the others go on.
        Returns ``{"rows": [...], "skipped": [name, ...], "failed": {name: why},
        "style_tilts": n, "input_wait_seconds": s, "input_read_seconds": s, "prefetched": bool}``.
        """
        import torch

        from faket.nst import match_tilt_stats, to_unit
        from faket.store import done_mask, open_store, write_tilt

        idx = list(tilts)
        data, waited, read = self._inputs(store, names, idx)
        root = open_store(store)
        style = data["style"]
        targets = self.transfer.style_targets(
            [to_unit(style, *map(np.float32, data["style_range"]))], data["size"])
        bad = os.environ.get(FAIL_TILT_ENV, "")
        out: dict = {"rows": [], "skipped": [], "failed": {}, "style_tilts": len(idx),
                     "input_wait_seconds": waited, "input_read_seconds": read,
                     "prefetched": waited < read}
        writes = {}

        def write(g, result) -> None:
            for k, i in enumerate(idx):
                write_tilt(g, "faket", i, result[k])

        for name in names:
            t0 = time.perf_counter()
            g = root[name]
            if done_mask(g, "faket")[idx].all():
                out["skipped"].append(name)
                continue
            try:
                if bad and any(bad == f"{name}:{i}" for i in idx):
                    raise RuntimeError(f"injected failure of {bad}")
                m = data["members"][name]
                r = m["ranges"]
                res = self.transfer.stylize_batch(to_unit(m["content"], *map(np.float32, r["content"])), None,
                                                  to_unit(m["noisy"], *map(np.float32, r["noisy"])),
                                                  style_targets=targets)
                result = match_tilt_stats(res.images.cpu().numpy(), style)
                _maybe_crash()
                writes[name] = self._writer.submit(write, g, result)
            except Exception as err:          # reported per tomogram; the driver retries it
                out["failed"][name] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
                continue
            if self.device == "cuda":
                peak = torch.cuda.max_memory_allocated()
            else:
                import resource

                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            seconds = time.perf_counter() - t0
            out["rows"] += [{"tomogram": name, "tilt": i, "loss": float(res.losses[k]), "seconds": seconds,
                             "peak_memory_bytes": int(peak), "pid": self.pid, "node": self.node,
                             "device": self.device, "gpu_ids": self.gpu_ids, "compute": self.compute}
                            for k, i in enumerate(idx)]
        for name, fut in writes.items():           # the task returns once its results are stored
            try:
                fut.result()
            except Exception as err:
                out["failed"][name] = f"write: {type(err).__name__}: {err}".splitlines()[0][:200]
                out["rows"] = [row for row in out["rows"] if row["tomogram"] != name]
        return out


def _maybe_crash() -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if marker and not os.path.exists(marker):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


# --------------------------------------------------------------------------- driver
def _distinct(records) -> list[dict]:
    """The distinct dicts of an iterable, in first-seen order (actors' compute records)."""
    seen: dict[str, dict] = {}
    for r in records:
        seen.setdefault(json.dumps(r, sort_keys=True), r)
    return list(seen.values())


def run(spec: RunSpec, *, address: str | None = None, actors: int | None = None,
        say: Callable[[str], None] = print, progress=None) -> dict:
    """Run a spec to completion (or resume it); returns a summary dict."""
    from faket.noise import NoiseModel
    from faket.reproducible import requested, switch_environment
    from faket.store import done_mask, open_store
    from faket.weights import resolve_weights

    t_start = time.perf_counter()
    weights = resolve_weights(spec.weights, seed=spec.weights_seed)
    if not weights.is_imagenet:
        say(f"WARNING: VGG-19 weights are {weights.identity['kind']}, not ImageNet")
    init_ray(address or spec.resources.address)
    res = spec.resources
    n_gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = res.gpus_per_actor > 0 or (res.actors is None and n_gpus > 0)
    gpus = (res.gpus_per_actor or 1.0) if use_gpu else 0.0
    n_actors = actors or res.actors or (max(1, int(n_gpus / gpus)) if use_gpu else 2)
    if res.device == "cuda" and not use_gpu:
        raise FaketInputError(f"spec {spec.path}: resources.device = \"cuda\" but the cluster has no "
                              "GPUs: use device = \"cpu\" or \"auto\"")
    if use_gpu and n_gpus < gpus:
        raise FaketInputError(f"spec {spec.path}: asks for {gpus} GPU per actor but the cluster has "
                              f"{n_gpus} GPUs: set gpus_per_actor = 0 for CPU actors")
    if not use_gpu:
        say(f"no GPU actors: running {n_actors} CPU actor(s)")
    total_cpus = ray.cluster_resources().get("CPU", 0)
    if res.cpus_per_actor > total_cpus:
        raise FaketInputError(f"spec {spec.path}: cpus_per_actor = {res.cpus_per_actor} but the "
                              f"cluster has {total_cpus:g} CPUs")
    prepare, estimate, reconstruct_task, export_task = _remote_functions()

    store = str(spec.store)
    root = open_store(store)
    root.attrs.update({"spec": spec.raw, "spec_path": str(spec.path), "weights": weights.identity})
    if spec.noise_model is not None:
        model_json = NoiseModel.load(spec.noise_model).to_json()
    else:
        model_json = ray.get(estimate.remote([(str(a), str(b)) for a, b in spec.noise_pairs],
                                             spec.noise_order))
    say(f"preparing {len(spec.tomograms)} tomogram(s) in {store}")
    ray.get([prepare.remote(store, t, model_json, spec.content_sigma) for t in spec.tomograms])

    # Per-tilt NST tasks, only for tilts not done yet. Tomograms styled by the
    # same style stack (same file, same image sizes) go together, up to
    # share_style per task, so that its Gram targets are computed once.
    batch = res.batch
    pending: collections.deque = collections.deque()
    total = done_before = 0
    groups: dict = {}
    for t in spec.tomograms:
        g = root[t.name]
        key = (str(Path(t.style).resolve()), g["style"].shape, g["content"].shape)
        groups.setdefault(key, []).append(t.name)
    for members in groups.values():
        for m0 in range(0, len(members), res.share_style):
            names = members[m0:m0 + res.share_style]
            masks = {n: done_mask(root[n], "faket") for n in names}
            for mask in masks.values():
                total += len(mask)
                done_before += int(mask.sum())
            todo = [int(i) for i in np.flatnonzero(~np.all(list(masks.values()), axis=0))]
            for k in range(0, len(todo), batch):
                tilts = tuple(todo[k:k + batch])
                need = tuple(n for n in names if not masks[n][list(tilts)].all())
                pending.append((need, tilts))
    to_do = total - done_before
    say(f"{total} tilts, {done_before} already done, {to_do} to do, {n_actors} actor(s)")
    options = dict(num_gpus=gpus, num_cpus=res.cpus_per_actor, max_restarts=-1,
                   max_task_retries=res.max_task_retries)
    if res.spread:
        options["scheduling_strategy"] = "SPREAD"
    hooks = {k: os.environ[k] for k in (CRASH_ONCE_ENV, FAIL_TILT_ENV) if os.environ.get(k)}
    if requested():                      # the reproducible switch travels to every actor
        hooks.update(switch_environment())
    if hooks:
        options["runtime_env"] = {"env_vars": hooks}
    worker_cls = ray.remote(concurrency_groups={"io": 1})(NSTWorker).options(**options)
    # Nested in a list, the reference is fetched by the actor rather than resolved by Ray
    # as an argument; the driver holds it for the whole run, so restarted actors find it.
    weights_ref = ray.put(weights.state_dict)
    on_gpu = use_gpu and res.device != "cpu"      # device = "cpu": GPUs reserved, not used
    workers = [worker_cls.remote([weights_ref], spec.nst, on_gpu, int(res.cpus_per_actor), res.in_flight + 2)
               for _ in range(min(n_actors, len(pending)))]
    in_flight: dict = {}
    load = [0] * len(workers)
    attempts: collections.Counter = collections.Counter()
    failures: dict = {}
    meta: list[dict] = []
    style_tilts = 0                       # style tilts whose Gram targets were computed
    input_wait = 0.0                      # seconds actors waited for inputs
    input_read = 0.0                      # seconds reading inputs took (hidden or not)
    prefetched = 0                        # tasks whose inputs were read ahead
    t_nst = time.perf_counter()
    while pending or in_flight:
        for w in range(len(workers)):
            while pending and load[w] < res.in_flight:
                job = pending.popleft()
                ref = workers[w].stylize.remote(store, list(job[0]), list(job[1]))
                workers[w].prefetch.remote(store, list(job[0]), list(job[1]))   # read while it waits
                in_flight[ref] = (w, job)
                load[w] += 1
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            w, job = in_flight.pop(ref)
            load[w] -= 1
            names, tilts = job
            try:
                out = ray.get(ref)
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as err:
                out = {"rows": [], "skipped": [],
                       "failed": dict.fromkeys(names, str(err).strip().splitlines()[-1][:200])}
            meta.extend(out["rows"])
            style_tilts += out.get("style_tilts", 0)
            input_wait += out.get("input_wait_seconds", 0.0)
            input_read += out.get("input_read_seconds", 0.0)
            prefetched += bool(out.get("prefetched"))
            if progress is not None:
                progress(len(out["rows"]) + len(out["skipped"]) * len(tilts))
            retry = []
            for name, why in out["failed"].items():
                attempts[(name, tilts)] += 1
                if attempts[(name, tilts)] <= res.max_task_retries:
                    retry.append(name)
                else:
                    failures[(name, tilts)] = why
            if retry:
                pending.append((tuple(retry), tilts))
    nst_seconds = time.perf_counter() - t_nst
    for w in workers:
        ray.kill(w)
    if failures:
        (name, tilts), why = next(iter(failures.items()))
        raise RunFailed(f"tomogram {name} tilt {tilts[0]} failed {res.max_task_retries + 1} times "
                        f"({why}); {len(failures)} task(s) failed, the other tilts are done: "
                        "fix the cause and rerun the same spec")
    recs = []
    if spec.reconstruction is not None:
        say("reconstructing")
        recs = ray.get([reconstruct_task.remote(store, t.name, spec.reconstruction,
                                                root[t.name].attrs["angles"]) for t in spec.tomograms])
    exported = []
    if spec.export is not None:
        say(f"exporting MRC files to {spec.export}")
        exported = ray.get(export_task.remote(store, str(spec.export), [t.name for t in spec.tomograms]))
    summary = {"store": store, "tilts": total, "done_before": done_before, "done_now": to_do,
               "actors": len(workers), "gpu": use_gpu, "nst_seconds": nst_seconds,
               "tilts_per_second": to_do / nst_seconds if to_do and nst_seconds > 0 else None,
               "style_gram_tilts": style_tilts, "input_wait_seconds": input_wait,
               "input_read_seconds": input_read,
               "prefetched_tasks": prefetched,
               "seconds": time.perf_counter() - t_start, "reconstructions": recs,
               "exported": exported, "workers": sorted({m["pid"] for m in meta}),
               "nodes": sorted({m["node"] for m in meta}),
               "gpu_ids": sorted({g for m in meta for g in m["gpu_ids"]}),
               "devices": sorted({m["device"] for m in meta}),
               "compute": _distinct(m["compute"] for m in meta)}
    root.attrs.update({"last_run": {k: v for k, v in summary.items() if k not in ("exported", "compute")},
                       "compute": summary["compute"]})
    return summary
