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

import collections
import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, TypeVar

import ray

from faket.errors import FaketInputError
from faket.ngff import class_names, describe_tomogram
from faket.pipeline import Stage

from ._clock import StageClock
from .actor import CRASH_ONCE_ENV, FAIL_TILT_ENV
from .fleet import ActorPlan, Fleet, launch, plan_actors
from .ray_setup import LOOPBACK_ENV, init_ray
from .retry import Attempts, RetryPolicy, describe, is_fault
from .spec import RunSpec
from .tasks import prepare_tomogram, remote_functions

if TYPE_CHECKING:
    from .schedule import JobFeed

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
#: Set (to anything) to run the prepare stage wholly before the NST stage also where the NST of
#: each tomogram would start once it is prepared (GPU actors, several tomograms): benchmarks.
STAGED_ENV = "FAKET_ENGINE_STAGED"


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


# --------------------------------------------------------------------------- plain tasks
def run_tasks(
    submit: Callable[[K], Any],
    items: list[K],
    policy: RetryPolicy,
    at_once: int | None = None,
    on_result: Callable[[K, Any], None] | None = None,
) -> tuple[dict[K, Any], dict[K, str]]:
    """Run one Ray task per item under the retry policy; returns (results, failures with errors).

    at_once: at most this many items' tasks at a time, in the items' order (default: all);
    on_result(item, result): called here as each item succeeds.
    """
    attempts = Attempts(policy)
    todo = collections.deque(items)
    limit = at_once or max(1, len(items))
    waiting: dict = {}
    delayed: list[tuple[float, K]] = []
    results: dict[K, Any] = {}
    failures: dict[K, str] = {}
    while todo or waiting or delayed:
        now = time.monotonic()
        for at, item in [d for d in delayed if d[0] <= now]:
            delayed.remove((at, item))
            todo.appendleft(item)  # a retry goes first
        while todo and len(waiting) < limit:
            item = todo.popleft()
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
                continue
            if on_result is not None:
                on_result(item, results[item])
    return results, failures


# --------------------------------------------------------------------------- the run
def _noise_model(spec: RunSpec, policy: RetryPolicy, reserved: float = 0.0) -> tuple[dict, dict[str, float]]:
    """The run's noise model as JSON: loaded from the spec's file, or estimated from its pairs
    (reserved: CPUs this run's actors hold meanwhile); and the estimate's wall seconds per phase."""
    from faket.noise import NoiseModel

    _, estimate, _, _ = remote_functions()

    if spec.noise_model is not None:
        return NoiseModel.load(spec.noise_model).to_json(), {}
    pairs = [(str(a), str(b)) for a, b in spec.noise_pairs]
    cpus = _free_cpus(1, reserved)
    task = estimate.options(num_cpus=cpus)
    results, failures = run_tasks(lambda _: task.remote(pairs, spec.noise_order, cpus), ["noise"], policy)
    if failures:
        raise RunFailed(
            f"the noise model could not be estimated ({failures['noise']}): "
            "fix the cause and rerun the same spec"
        )
    return results["noise"]["model"], results["noise"]["seconds"]


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


def _free_cpus(tasks: int, reserved: float = 0.0, settle_s: float = 1.0) -> int:
    """CPUs for each of ``tasks`` CPU tasks (threads over tilts): the free ones shared, 1 to 16
    each, and never more than one node has (a task runs on one node: more would wait for ever).

    Ray gives back a finished task's CPUs a moment after its result (about 0.1 s here), so
    the count is read again for up to ``settle_s`` while it is below the cluster's CPUs less
    ``reserved`` (those this run's own actors hold).
    """
    expect = ray.cluster_resources().get("CPU", 1) - reserved
    deadline = time.monotonic() + settle_s
    while (avail := ray.available_resources().get("CPU", 0)) < expect and time.monotonic() < deadline:
        time.sleep(0.02)
    # never more than the actors leave, wherever they run: a task waiting for their CPUs would
    # wait for ever (the largest node keeps at least its CPUs less all the actors' free)
    free = int(max(1, min(avail, expect))) // max(1, tasks)
    return max(1, min(16, int(_largest_node_cpus() - reserved), free))


def _largest_node_cpus() -> float:
    return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)


def _prepare_stage(
    spec: RunSpec,
    policy: RetryPolicy,
    model_json: dict,
    say,
    reserved: float = 0.0,
    at_once: int | None = None,
    on_prepared: Callable[[str], None] | None = None,
) -> tuple[dict[str, str], dict[str, float]]:
    """Each tomogram's prepare task (reserved: CPUs this run's actors hold meanwhile; at_once:
    tomograms prepared at a time, sharing the free CPUs, default all; ``on_prepared(name)`` as
    each succeeds); returns the tomograms that failed and the tasks' wall seconds per phase,
    summed over tomograms."""
    prepare, _, _, _ = remote_functions()
    store = str(spec.store)
    say(f"preparing {len(spec.tomograms)} tomogram(s) in {store}")
    by_name = {t.name: t for t in spec.tomograms}
    cpus = _free_cpus(min(at_once or len(by_name), len(by_name)), reserved)
    task = prepare.options(num_cpus=cpus)
    done, prep_failed = run_tasks(
        lambda n: task.remote(store, by_name[n], model_json, spec.content_sigma, cpus),
        list(by_name),
        policy,
        at_once,
        None if on_prepared is None else lambda n, _: on_prepared(n),
    )
    phases: dict[str, float] = {}
    for result in done.values():
        for phase, secs in result["seconds"].items():
            phases[phase] = round(phases.get(phase, 0.0) + secs, 3)
    return prep_failed, phases


def _nst_stage(
    spec: RunSpec,
    root,
    plan: ActorPlan,
    state_dict: dict,
    policy: RetryPolicy,
    progress,
    skip,
    say,
    fleet: Fleet | None = None,
    feed: JobFeed | None = None,
):
    """Every tilt not done yet through the actors (``fleet``: started already, or started here;
    ``feed``: the jobs of tomograms prepared meanwhile, see :func:`_pipelined`); returns (stats,
    actors, seconds, total, done before)."""
    from .schedule import NSTScheduler, nst_jobs

    pending, total, done_before = nst_jobs(root, spec, skip, plan.count)
    say(f"{total} tilts, {done_before} already done, {total - done_before} to do, {plan.count} actor(s)")
    if fleet is None:
        fleet = launch(spec, plan, state_dict, min(plan.count, len(pending)))
    # the NST's clock starts when the actors are up and warm, and have their first jobs
    fleet.ready()
    while feed is not None and feed.open and not pending:
        pending.extend(feed.take(wait_s=0.5))
    t_nst = time.perf_counter()
    bar = progress(total, done_before) if progress is not None else contextlib.nullcontext(None)
    with bar as advance:
        scheduler = NSTScheduler(
            fleet.workers, str(spec.store), spec.resources.in_flight, policy, advance, fleet.weights
        )
        stats = scheduler.run(pending, feed)
    seconds = time.perf_counter() - t_nst
    n = len(fleet.workers)
    fleet.stop()
    return stats, n, seconds, total, done_before


def _pipelined(
    spec: RunSpec, root, plan: ActorPlan, weights, policy: RetryPolicy, model_json: dict, jobs: dict
) -> tuple:
    """The prepare stage beside the NST stage, for GPU actors started already and several
    tomograms: tomograms are prepared one at a time per node, on all its free CPUs, and each
    one's NST tasks are queued as soon as its prepare task ends (its value ranges are known
    only then), so the GPUs work while the rest is prepared. ``jobs``: keyword arguments of
    :func:`_nst_stage` (progress, say, fleet). Returns (:func:`_nst_stage`'s tuple, the
    prepare stage's failures, its phase seconds, its wall seconds)."""
    from .schedule import JobFeed, nst_jobs

    names = [t.name for t in spec.tomograms]

    def make_jobs(ready: list[str]) -> list:
        for n in ready:  # OME-Zarr metadata, now that voxel sizes and labels are known
            describe_tomogram(root[n], class_names(root[n].attrs.get("particles_csv")))
        return list(nst_jobs(root, spec, set(names) - set(ready), plan.count)[0])

    feed = JobFeed(make_jobs)
    outcome: dict = {}

    def prepare_all() -> None:
        t0 = time.perf_counter()
        try:
            nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1)
            reserved = jobs["fleet"].cpus
            outcome["prepare"] = _prepare_stage(
                spec, policy, model_json, jobs["say"], reserved, max(1, nodes), feed.put
            )
        except BaseException as err:  # raised in the driver's thread, below
            outcome["error"] = err
        finally:
            outcome["seconds"] = time.perf_counter() - t0
            feed.close()

    thread = threading.Thread(target=prepare_all, name="faket-prepare-stage", daemon=True)
    thread.start()
    nst = _nst_stage(spec, root, plan, weights.state_dict, policy, skip=set(names), feed=feed, **jobs)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return nst, *outcome["prepare"], outcome["seconds"]


def _early_fleet(spec: RunSpec, root, plan: ActorPlan, state_dict: dict) -> Fleet | None:
    """GPU actors started now, before the prepare stage (see :mod:`faket_cluster.fleet`), one per
    tilt to do at most; None for CPU actors or when every tilt is done."""
    from faket.store import done_mask

    if not plan.use_gpu:
        return None
    todo = sum(int((~done_mask(root[t.name], "faket")).sum()) for t in spec.tomograms)
    n = min(plan.count, todo)
    if not n or _largest_node_cpus() - n * spec.resources.cpus_per_actor < 1:
        return None  # nothing to do, or the actors might leave the prepare stage no CPU
    return launch(spec, plan, state_dict, n)


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

    clock = StageClock()
    weights, plan, root = _start(spec, address, actors, restart, say)
    clock.lap("start")
    policy = policy_of(spec)
    fleet = _early_fleet(spec, root, plan, weights.state_dict)
    try:
        reserved = fleet.cpus if fleet is not None else 0.0
        model_json, noise_phases = _noise_model(spec, policy, reserved)
        clock.lap("noise_model")
        pipelined = fleet is not None and len(spec.tomograms) > 1 and not os.environ.get(STAGED_ENV)
        if pipelined:  # each tomogram's NST as soon as it is prepared
            jobs = {"progress": progress, "say": say, "fleet": fleet}
            nst, prep_failed, prep_phases, prep_seconds = _pipelined(
                spec, root, plan, weights, policy, model_json, jobs
            )
            stats, n_actors, nst_seconds, total, done_before = nst
            clock.lap("prepare", clock.since() - nst_seconds)  # until the first tomogram's NST
            clock.lap("actors_up", 0.0)  # up during the prepare stage
        else:
            prep_failed, prep_phases = _prepare_stage(spec, policy, model_json, say, reserved)
            prep_seconds = clock.since()
            clock.lap("prepare")
            for t in spec.tomograms:  # OME-Zarr metadata, now that voxel sizes and labels are known
                if t.name not in prep_failed:
                    describe_tomogram(root[t.name], class_names(root[t.name].attrs.get("particles_csv")))
            stats, n_actors, nst_seconds, total, done_before = _nst_stage(
                spec, root, plan, weights.state_dict, policy, progress, set(prep_failed), say, fleet
            )
            clock.lap("actors_up", clock.since() - nst_seconds)
    finally:
        if fleet is not None:  # stopped already unless the run ends early (a failed noise model)
            fleet.stop()
    clock.lap("stylize")
    failed: dict[str, dict[str, str]] = {n: {Stage.PREPARE.value: why} for n, why in prep_failed.items()}
    for (name, tilts), (why, n) in stats.failures.items():
        failed.setdefault(name, {}).update({f"stylize:{i}": f"{why} ({n} attempts)" for i in tilts})
    complete = [
        t.name for t in spec.tomograms if t.name not in failed and done_mask(root[t.name], "faket").all()
    ]
    recs, exported, late = _finish(root, spec, complete, policy, say)
    clock.lap("finish")
    for name, why in late.items():
        failed.setdefault(name, {}).update(why)
    done_now = sum(int(done_mask(root[t.name], "faket").sum()) for t in spec.tomograms) - done_before
    summary = {
        "store": str(spec.store),
        "tilts": total,
        "done_before": done_before,
        "done_now": done_now,
        "actors": n_actors,
        "actors_started_early": fleet is not None,  # GPU actors warmed up during the prepare stage
        "gpu": plan.use_gpu,
        "nst_seconds": nst_seconds,
        # the NST began as the first tomogram was prepared, beside the others' prepare tasks
        "pipelined": pipelined,
        "prepare_seconds": round(prep_seconds, 3),  # the whole prepare stage's wall time
        "tilts_per_second": done_now / nst_seconds if done_now and nst_seconds > 0 else None,
        **_stats_summary(stats),
        "seconds": clock.total(),
        "stage_seconds": clock.laps,
        # inside the noise estimate and the prepare tasks (summed over tomograms)
        "phase_seconds": {"noise_model": noise_phases, "prepare": prep_phases},
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
