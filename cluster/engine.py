"""The Ray engine's driver: lay out the store, prepare tomograms, per-tilt NST tasks on actors.

The driver never moves image data: tasks carry (store path, tomogram, tilt
indices) and return small metadata. Actors load VGG-19 once; the weights
are resolved once by the driver and shipped through Ray's object store, so
compute nodes need no internet. The driver creates every array first
(:mod:`faket_cluster.layout`); each tilt has one writer and is marked done
after its data is written, so a rerun of the same spec does only what is
missing, whatever the number of actors or the order of completion. Every
fault goes through one retry policy (:mod:`faket_cluster.retry`); a tilt that
fails its last attempt is recorded in the store and the summary while the
rest of the run completes. The method itself lives in :mod:`faket`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, TypeVar

import ray

from faket.errors import FaketInputError
from faket.ngff import class_names, describe_tomogram
from faket.pipeline import Stage

from .actor import CRASH_ONCE_ENV, FAIL_TILT_ENV, NSTWorker
from .ray_setup import LOOPBACK_ENV, init_ray
from .retry import Attempts, RetryPolicy, describe, is_fault
from .spec import RunSpec
from .tasks import prepare_tomogram, remote_functions

__all__ = [
    "CRASH_ONCE_ENV",
    "FAIL_TILT_ENV",
    "LOOPBACK_ENV",
    "RunFailed",
    "init_ray",
    "prepare_tomogram",
    "raise_if_failed",
    "run",
]


K = TypeVar("K", bound=Hashable)


class RunFailed(RuntimeError):
    """Tilts kept failing; the message names the first tomogram and tilt."""


def _distinct(records: Iterable[dict]) -> list[dict]:
    """The distinct dicts of an iterable, in first-seen order (actors' compute records)."""
    seen: dict[str, dict] = {}
    for r in records:
        seen.setdefault(json.dumps(r, sort_keys=True), r)
    return list(seen.values())


def policy_of(spec: RunSpec) -> RetryPolicy:
    """The run's retry policy: ``max_task_retries`` retries after the first attempt."""
    return RetryPolicy(
        max_attempts=spec.resources.max_task_retries + 1, backoff_s=spec.resources.retry_backoff
    )


# --------------------------------------------------------------------------- actors
@dataclass(frozen=True)
class ActorPlan:
    count: int
    use_gpu: bool  # actors reserve GPUs from Ray
    gpus: float  # GPUs per actor
    on_gpu: bool  # actors compute on CUDA (device != "cpu")


def plan_actors(spec: RunSpec, actors: int | None) -> ActorPlan:
    """How many actors with which resources; impossible requests end here, before any work."""
    res = spec.resources
    n_gpus = int(ray.cluster_resources().get("GPU", 0))
    # device = "cuda" makes GPU actors even with an actor count given (one GPU each by default)
    use_gpu = res.gpus_per_actor > 0 or res.device == "cuda" or (res.actors is None and n_gpus > 0)
    gpus = (res.gpus_per_actor or 1.0) if use_gpu else 0.0
    if actors is not None and actors < 1:
        raise FaketInputError(f"--actors must be >= 1, got {actors}")
    count = actors or res.actors or (max(1, int(n_gpus / gpus)) if use_gpu else 2)
    if res.device == "cuda" and n_gpus == 0:
        raise FaketInputError(
            f'spec {spec.path}: resources.device = "cuda" but the cluster has no '
            'GPUs: use device = "cpu" or "auto"'
        )
    if use_gpu and n_gpus < gpus:
        raise FaketInputError(
            f"spec {spec.path}: asks for {gpus} GPU per actor but the cluster has "
            f"{n_gpus} GPUs: set gpus_per_actor = 0 for CPU actors"
        )
    if use_gpu and count * gpus > n_gpus:  # Ray would wait for GPUs that never come
        raise FaketInputError(
            f"spec {spec.path}: {count} GPU actors x {gpus:g} GPU need {count * gpus:g} GPUs but the "
            f"cluster has {n_gpus}: ask for at most {int(n_gpus / gpus)} actors (resources.actors, --actors)"
        )
    total_cpus = ray.cluster_resources().get("CPU", 0)
    if res.cpus_per_actor > total_cpus:
        raise FaketInputError(
            f"spec {spec.path}: cpus_per_actor = {res.cpus_per_actor} but the cluster has {total_cpus:g} CPUs"
        )
    return ActorPlan(count, use_gpu, gpus, use_gpu and res.device != "cpu")


def start_actors(spec: RunSpec, plan: ActorPlan, state_dict: dict, n: int) -> tuple[list, Any]:
    """``n`` NST actors; Ray restarts a dead one, the driver's policy retries its tasks.

    Returns (actors, ``[the weights' object reference]``): the caller passes it with
    every task and holds it for the whole run, so that a restarted actor finds it.
    """
    from faket.reproducible import requested, switch_environment

    res = spec.resources
    options: dict[str, Any] = dict(
        num_gpus=plan.gpus, num_cpus=res.cpus_per_actor, max_restarts=-1, max_task_retries=0
    )
    if res.spread:
        options["scheduling_strategy"] = "SPREAD"
    env = {k: os.environ[k] for k in (CRASH_ONCE_ENV, FAIL_TILT_ENV) if os.environ.get(k)}
    if requested():  # the reproducible switch travels to every actor
        env.update(switch_environment())
    if env:
        options["runtime_env"] = {"env_vars": env}
    worker_cls = ray.remote(concurrency_groups={"io": 2, "flush": 1})(NSTWorker).options(**options)  # type: ignore[call-overload]
    # The weights travel with the tasks, nested in a list (the actor fetches them once): no
    # constructor argument lives in the object store, so restarts need nothing kept for them.
    weights_ref = ray.put(state_dict)
    actors = [
        worker_cls.remote(spec.nst, plan.on_gpu, int(res.cpus_per_actor), res.in_flight + 2) for _ in range(n)
    ]
    return actors, [weights_ref]


# --------------------------------------------------------------------------- plain tasks
def run_tasks(
    submit: Callable[[K], Any], items: list[K], policy: RetryPolicy
) -> tuple[dict[K, Any], dict[K, str]]:
    """Run one Ray task per item under the retry policy; returns (results, failures with errors)."""
    attempts = Attempts(policy)
    waiting = {submit(item): item for item in items}
    delayed: list[tuple[float, K]] = []
    results: dict[K, Any] = {}
    failures: dict[K, str] = {}
    while waiting or delayed:
        now = time.monotonic()
        for at, item in [d for d in delayed if d[0] <= now]:
            delayed.remove((at, item))
            waiting[submit(item)] = item
        if not waiting:
            time.sleep(max(0.0, min(at for at, _ in delayed) - now))
            continue
        ready, _ = ray.wait(list(waiting), num_returns=1, timeout=0.5 if delayed else None)
        for ref in ready:
            item = waiting.pop(ref)
            try:
                results[item] = ray.get(ref)
            except Exception as err:  # FaketInputError from a task, any Ray fault
                if not (is_fault(err) or isinstance(err, FaketInputError)):
                    raise
                retry_at = attempts.record(item, describe(err))
                if retry_at is None:
                    failures[item] = attempts.last_error[item]
                else:
                    delayed.append((retry_at, item))
    return results, failures


# --------------------------------------------------------------------------- the run
def _noise_model(spec: RunSpec, estimate, policy: RetryPolicy) -> dict:
    from faket.noise import NoiseModel

    if spec.noise_model is not None:
        return NoiseModel.load(spec.noise_model).to_json()
    pairs = [(str(a), str(b)) for a, b in spec.noise_pairs]
    cpus = _free_cpus(1)
    task = estimate.options(num_cpus=cpus)
    results, failures = run_tasks(lambda _: task.remote(pairs, spec.noise_order, cpus), ["noise"], policy)
    if failures:
        raise RunFailed(
            f"the noise model could not be estimated ({failures['noise']}): "
            "fix the cause and rerun the same spec"
        )
    return results["noise"]


def _record_failures(root, spec: RunSpec, failed: dict[str, dict[str, str]]) -> list[dict]:
    """Failed tilts per tomogram into the store (``failures`` attribute) and the summary."""
    rows = []
    for t in spec.tomograms:
        mine = failed.get(t.name, {})
        root[t.name].attrs["failures"] = mine
        rows += [{"tomogram": t.name, "stage": stage, "error": why} for stage, why in sorted(mine.items())]
    return rows


def _finish(root, spec: RunSpec, complete: list[str], policy: RetryPolicy, say) -> tuple[list, list, dict]:
    """Reconstruction and export of the complete tomograms; returns (shapes, files, failures)."""
    from faket.store import done_mask

    _, _, reconstruct_task, export_task = remote_functions()
    store, failed = str(spec.store), {}
    recs: dict = {}
    if spec.reconstruction is not None:
        todo = [n for n in complete if not done_mask(root[n], "reconstruction").all()]
        say(f"reconstructing {len(todo)} tomogram(s)")
        recs, rec_failed = run_tasks(
            lambda n: reconstruct_task.remote(store, n, spec.reconstruction, root[n].attrs["angles"]),
            todo,
            policy,
        )
        failed.update({n: {Stage.RECONSTRUCT.value: why} for n, why in rec_failed.items()})
    exported: list = []
    ready = [n for n in complete if n not in failed]
    if spec.export is not None and ready:
        say(f"exporting MRC files to {spec.export}")
        files, exp_failed = run_tasks(
            lambda _: export_task.remote(store, str(spec.export), ready), ["export"], policy
        )
        exported = files.get("export", [])
        for n in ready if exp_failed else []:
            failed.setdefault(n, {})[Stage.EXPORT.value] = exp_failed["export"]
    return [recs[n] for n in complete if n in recs], exported, failed


def _distrust_damaged(root, spec: RunSpec, say) -> None:
    """On resume, done tilts whose data is missing or does not decode are done again."""
    from faket.store_check import clear_problems, verify_store

    problems = verify_store(root, [t.name for t in spec.tomograms])
    if problems:
        say(
            f"{len(problems)} done tilt(s) or volume(s) missing or corrupt in the store, recomputing them: "
            + "; ".join(map(str, problems[:3]))
            + (" ..." if len(problems) > 3 else "")
        )
        clear_problems(root, problems)


def _start(spec: RunSpec, address: str | None, actors: int | None, restart: Stage | None, say) -> tuple:
    """Weights, a resume check, Ray, the actor plan and the laid-out store; nothing computed yet."""
    from faket.store import open_store
    from faket.weights import resolve_weights

    from .layout import check_resume, lay_out

    weights = resolve_weights(spec.weights, seed=spec.weights_seed)
    if spec.store.exists():  # refuse a changed spec before touching anything
        check_resume(open_store(spec.store, mode="r"), spec, weights.identity, restart)
    if not weights.is_imagenet:
        say(f"WARNING: VGG-19 weights are {weights.identity['kind']}, not ImageNet")
    init_ray(address or spec.resources.address)
    plan = plan_actors(spec, actors)
    if not plan.use_gpu:
        say(f"no GPU actors: running {plan.count} CPU actor(s)")
    resumed = spec.store.exists()
    root = open_store(str(spec.store))
    lay_out(root, spec, weights.identity, restart)
    if resumed:
        _distrust_damaged(root, spec, say)
    root.attrs.update(
        {"spec": spec.raw, "spec_path": str(Path(spec.path).resolve()), "weights": weights.identity}
    )
    return weights, plan, root


def _free_cpus(tasks: int) -> int:
    """CPUs for each of ``tasks`` CPU tasks (threads over tilts): the free ones shared, 1 to 16
    each, and never more than one node has (a task runs on one node: more would wait for ever)."""
    per_node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    free = int(ray.available_resources().get("CPU", 1)) // max(1, tasks)
    return max(1, min(16, int(per_node), free))


def _prepare_stage(spec: RunSpec, policy: RetryPolicy, say) -> dict[str, str]:
    """The noise model, then each tomogram's prepare task; returns the tomograms that failed."""
    prepare, estimate, _, _ = remote_functions()
    model_json = _noise_model(spec, estimate, policy)
    store = str(spec.store)
    say(f"preparing {len(spec.tomograms)} tomogram(s) in {store}")
    by_name = {t.name: t for t in spec.tomograms}
    cpus = _free_cpus(len(by_name))
    task = prepare.options(num_cpus=cpus)
    _, prep_failed = run_tasks(
        lambda n: task.remote(store, by_name[n], model_json, spec.content_sigma, cpus), list(by_name), policy
    )
    return prep_failed


def _nst_stage(
    spec: RunSpec, root, plan: ActorPlan, state_dict: dict, policy: RetryPolicy, progress, skip, say
):
    """Every tilt not done yet through the actors; returns (stats, actors, seconds, total, done before)."""
    from .schedule import NSTScheduler, nst_jobs

    pending, total, done_before = nst_jobs(root, spec, skip, plan.count)
    say(f"{total} tilts, {done_before} already done, {total - done_before} to do, {plan.count} actor(s)")
    workers, weights_ref = start_actors(spec, plan, state_dict, min(plan.count, len(pending)))
    # The NST's clock starts when the actors are up and warm (torch imported, VGG-19 loaded, on a
    # GPU one small NST run); a failed start is not waited on here: its tasks meet the retry
    # policy like any fault.
    warm = [w.warm_up.remote(weights_ref) for w in workers]
    for ref in ray.wait(warm, num_returns=len(workers), timeout=300)[0]:
        try:  # retrieved, so that Ray reports nothing unhandled; a broken actor fails its tasks
            ray.get(ref)
        except Exception:
            pass
    t_nst = time.perf_counter()
    bar = progress(total, done_before) if progress is not None else contextlib.nullcontext(None)
    with bar as advance:
        scheduler = NSTScheduler(
            workers, str(spec.store), spec.resources.in_flight, policy, advance, weights_ref
        )
        stats = scheduler.run(pending)
    seconds = time.perf_counter() - t_nst
    for w in workers:
        ray.kill(w)
    del weights_ref  # held until here: restarted actors fetch it
    return stats, len(workers), seconds, total, done_before


def run(
    spec: RunSpec,
    *,
    address: str | None = None,
    actors: int | None = None,
    say: Callable[[str], None] = print,
    progress=None,
    restart: Stage | None = None,
) -> dict:
    """Run a spec to completion (or resume it); returns a summary dict.

    Tilts that fail their last attempt are listed in ``summary["failed"]`` (and
    the store's ``failures`` attributes); everything else is done. Use
    :func:`raise_if_failed` to turn them into :class:`RunFailed`.
    restart: redo this stage and every later one (clears their done flags).
    progress: ``progress(total, done) -> context manager yielding advance(k)``, entered
        when the NST starts (e.g. :func:`faket.console.progress_bar`).
    """
    from faket.store import done_mask

    t_start = time.perf_counter()
    weights, plan, root = _start(spec, address, actors, restart, say)
    policy = policy_of(spec)
    prep_failed = _prepare_stage(spec, policy, say)
    for t in spec.tomograms:  # OME-Zarr metadata, now that voxel sizes and labels are known
        if t.name not in prep_failed:
            describe_tomogram(root[t.name], class_names(root[t.name].attrs.get("particles_csv")))
    stats, n_actors, nst_seconds, total, done_before = _nst_stage(
        spec, root, plan, weights.state_dict, policy, progress, set(prep_failed), say
    )
    failed: dict[str, dict[str, str]] = {n: {Stage.PREPARE.value: why} for n, why in prep_failed.items()}
    for (name, tilts), (why, n) in stats.failures.items():
        failed.setdefault(name, {}).update({f"stylize:{i}": f"{why} ({n} attempts)" for i in tilts})
    complete = [
        t.name for t in spec.tomograms if t.name not in failed and done_mask(root[t.name], "faket").all()
    ]
    recs, exported, late = _finish(root, spec, complete, policy, say)
    for name, why in late.items():
        failed.setdefault(name, {}).update(why)
    done_now = sum(int(done_mask(root[t.name], "faket").sum()) for t in spec.tomograms) - done_before
    summary = {
        "store": str(spec.store),
        "tilts": total,
        "done_before": done_before,
        "done_now": done_now,
        "actors": n_actors,
        "gpu": plan.use_gpu,
        "nst_seconds": nst_seconds,
        "tilts_per_second": done_now / nst_seconds if done_now and nst_seconds > 0 else None,
        **_stats_summary(stats),
        "seconds": time.perf_counter() - t_start,
        "reconstructions": recs,
        "exported": exported,
        "failed": _record_failures(root, spec, failed),
    }
    root.attrs["last_run"] = {k: v for k, v in summary.items() if k not in ("exported", "compute")}
    if summary["compute"]:  # what the actors computed with (none on a no-op resume)
        root.attrs["compute"] = summary["compute"]
    return summary


def _stats_summary(stats) -> dict:
    """What the actors reported: input timing, where they ran and with what arithmetic."""
    meta = stats.rows
    return {
        "style_gram_tilts": stats.style_tilts,
        "input_wait_seconds": stats.input_wait,
        "input_read_seconds": stats.input_read,
        "compute_seconds": stats.compute,
        "nst_tasks": stats.tasks,
        "prefetched_tasks": stats.prefetched,
        "workers": sorted({m["pid"] for m in meta}),
        "nodes": sorted({m["node"] for m in meta}),
        "gpu_ids": sorted({g for m in meta for g in m["gpu_ids"]}),
        "devices": sorted({m["device"] for m in meta}),
        "compute": _distinct(m["compute"] for m in meta),
        "tiled_tilts": sum(1 for m in meta if m.get("tile_size")),
    }


def raise_if_failed(summary: dict) -> None:
    """:class:`RunFailed` naming the first failed tilt, if the run had any."""
    failed = summary.get("failed") or []
    if failed:
        first = failed[0]
        raise RunFailed(
            f"{len(failed)} tilt(s) or step(s) failed, e.g. tomogram {first['tomogram']} "
            f"{first['stage']} ({first['error']}); the rest is done: fix the cause and "
            "rerun the same spec"
        )
