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

import os
from pathlib import Path
from typing import Callable

from faket._procs import chosen, processes_pay
from faket.pipeline import Stage

from . import _ahead_plan, stages
from ._clock import StageClock
from ._meta import GroupAttributes
from ._summary import made_tilts, phase_summary, stats_summary, timeline
from .actor import CRASH_ONCE_ENV, FAIL_TILT_ENV
from .fleet import plan_actors
from .ray_setup import LOOPBACK_ENV, init_ray, local_resources
from .retry import RetryPolicy, run_tasks
from .spec import RunSpec
from .stages import RunFailed
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
    "run_tasks",
]


#: Set (to anything) to run the prepare stage wholly before the NST stage also where the NST of
#: each tomogram would start once it is prepared (GPU actors, several tomograms): benchmarks.
STAGED_ENV = "FAKET_ENGINE_STAGED"


def policy_of(spec: RunSpec) -> RetryPolicy:
    """The run's retry policy: ``max_task_retries`` retries after the first attempt."""
    return RetryPolicy(
        max_attempts=spec.resources.max_task_retries + 1, backoff_s=spec.resources.retry_backoff
    )


# --------------------------------------------------------------------------- the run
def _record_failures(root, spec: RunSpec, failed: dict[str, dict[str, str]]) -> list[dict]:
    """Failed tilts per tomogram into the store (``failures`` attribute) and the summary."""
    rows = []
    for t in spec.tomograms:
        mine = failed.get(t.name, {})
        root[t.name].attrs["failures"] = mine
        rows += [{"tomogram": t.name, "stage": stage, "error": why} for stage, why in sorted(mine.items())]
    return rows


def _all_done(root, spec: RunSpec, ready: frozenset[str]) -> bool:
    """Whether every stage of every tomogram is done in the store (``ready``: those prepared)."""
    from faket.store import done_mask

    stages_done = ["faket", *(["reconstruction"] if spec.reconstruction is not None else [])]
    names = [t.name for t in spec.tomograms]
    return set(names) <= ready and all(done_mask(root[n], s).all() for n in names for s in stages_done)


def _current_export(root, spec: RunSpec, names: list[str]) -> list[str] | None:
    """The files of the store's last export where they are what an export now would write: the
    same folder and tomograms, every file still there (the run found nothing to do, so the
    store is as it was then: see ``run``)."""
    last = root.attrs.get("export")
    if not last or last.get("folder") != str(spec.export) or last.get("tomograms") != names:
        return None
    files = list(last.get("files", []))
    return files if all(Path(f).is_file() for f in files) else None


def _finish(
    root, spec: RunSpec, complete: list[str], policy: RetryPolicy, say, unchanged: bool = False
) -> tuple[list, list, dict, bool]:
    """Reconstruction and export of the complete tomograms; returns (shapes, files, failures,
    whether the export was kept). unchanged: the run wrote nothing into the store, so a current
    export is kept as it is."""
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
    current = _current_export(root, spec, ready) if unchanged and spec.export is not None else None
    if current is not None:
        say(f"MRC files in {spec.export} are current: the store has not changed since they were exported")
        exported = current
    elif spec.export is not None and ready:
        say(f"exporting MRC files to {spec.export}")
        files, exp_failed = run_tasks(
            lambda _: export_task.remote(store, str(spec.export), ready), ["export"], policy
        )
        exported = files.get("export", [])
        for n in ready if exp_failed else []:
            failed.setdefault(n, {})[Stage.EXPORT.value] = exp_failed["export"]
        if not exp_failed:
            root.attrs["export"] = {"folder": str(spec.export), "tomograms": ready, "files": exported}
    return [recs[n] for n in complete if n in recs], exported, failed, current is not None


def _distrust_damaged(root, spec: RunSpec, say, problems: list | None = None) -> None:
    """On resume, done tilts whose data is missing or does not decode are done again
    (``problems``: :func:`faket.store_check.verify_store`'s, found already while Ray started)."""
    from faket.store_check import clear_problems, verify_store

    if problems is None:
        problems = verify_store(root, [t.name for t in spec.tomograms])
    if problems:
        say(
            f"{len(problems)} done tilt(s) or volume(s) missing or corrupt in the store, recomputing them: "
            + "; ".join(map(str, problems[:3]))
            + (" ..." if len(problems) > 3 else "")
        )
        clear_problems(root, problems)


def _start(
    spec: RunSpec, address: str | None, actors: int | None, restart: Stage | None, say, clock: StageClock
) -> tuple:
    """Weights, a resume check, Ray, the actor plan and the laid-out store; nothing computed yet
    but what runs while a local Ray starts, once the spec is accepted: the noise model
    (:func:`stages.noise_model_beside_start`) and a resume's read-back. Returns (weights,
    actor plan, store root, the noise model's Future or None, the tomograms prepared already,
    (the Futures of the first tomogram's prepare and of its style targets made beside the
    start, each or both None)).
    clock: laps ``weights`` (and the resume check), ``layout`` (the work set going beside the
    start: a fresh store's layout among it), ``ray`` (Ray started or joined, the actor plan) and
    ``store`` (what is left of the store's layout or a resume's check)."""
    from faket._threads import beside
    from faket.store import open_store
    from faket.store_check import verify_store
    from faket.weights import resolve_weights

    from .layout import check_resume

    chosen()  # a bad FAKET_TILT_PROCESSES ends here, before any work
    weights = resolve_weights(spec.weights, seed=spec.weights_seed)
    checked, ready, root, early_prep, targets = None, frozenset[str](), None, None, None
    redoes_prepare = restart is not None and Stage.PREPARE in restart.and_later()
    resumed = spec.store.exists()
    if resumed:  # refuse a changed spec before touching anything
        stored = open_store(spec.store, mode="r")
        check_resume(stored, spec, weights.identity, restart)
        if restart is None:  # nothing is reset below: read every done tilt back while Ray starts
            names = [t.name for t in spec.tomograms if t.name in stored]
            checked = beside(lambda: verify_store(stored, names), "faket-verify-store")
        if not redoes_prepare:  # its flags stay as they are
            ready = stages.prepared(stored, spec)
    if not weights.is_imagenet:
        say(f"WARNING: VGG-19 weights are {weights.identity['kind']}, not ImageNet")
    clock.lap("weights")
    early = stages.noise_model_beside_start(spec, address) if len(ready) < len(spec.tomograms) else None
    laid_out = None
    if early is not None and not resumed:  # a fresh store, once the plan fits this machine (else
        local = plan_actors(spec, actors, *local_resources())  # one line, no store): laid out,
        laid_out = beside(lambda: _lay_out(spec, weights, restart), "faket-layout")  # its first
        early_prep = stages.prepare_beside_start(spec, early, laid_out)  # tomogram prepared and
        targets = _ahead_plan.style_targets_beside_start(spec, weights, local, laid_out)  # style targets
    clock.lap("layout")  # while Ray starts: the actors' start waits for neither
    try:
        init_ray(address or spec.resources.address)
        plan = plan_actors(spec, actors)
    except BaseException:  # (Ctrl-C too) the store stays whole: its layout ends before the error
        if laid_out is not None:
            laid_out.exception()
        raise
    if not plan.use_gpu:
        say(f"no GPU actors: running {plan.count} CPU actor(s)")
    clock.lap("ray")
    problems = checked.result() if checked is not None else None  # read before anything is written
    if laid_out is not None:
        root = laid_out.result()  # what the layout raised, if it failed
    if root is None:
        root = _lay_out(spec, weights, restart)
    if resumed:
        _distrust_damaged(root, spec, say, problems)
    if resumed and (redoes_prepare or problems):  # flags were reset: prepared is read again
        ready = stages.prepared(root, spec)
    clock.lap("store")
    return weights, plan, root, early, ready, (early_prep, targets)


def _lay_out(spec: RunSpec, weights, restart: Stage | None):
    """The store opened (created where new), every array laid out, the spec and weights
    recorded. Returns its root group."""
    from faket.store import open_store

    from .layout import lay_out

    root = open_store(str(spec.store))
    lay_out(root, spec, weights.identity, restart)
    root.attrs.update(
        {"spec": spec.raw, "spec_path": str(Path(spec.path).resolve()), "weights": weights.identity}
    )
    return root


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

    clock, inside_start = StageClock(), StageClock()
    weights, plan, root, early, ready, (early_prep, targets) = _start(
        spec, address, actors, restart, say, inside_start
    )
    clock.lap("start")
    policy = policy_of(spec)
    unchanged = restart is None and _all_done(root, spec, ready)
    fleet = stages.early_fleet(spec, root, plan, weights.state_dict)  # first: its start is the longest
    if not unchanged:  # this run writes into the store: its MRC files are exported again
        root.attrs["export"] = None
    meta = GroupAttributes.of(root, [t.name for t in spec.tomograms])
    together = fleet is not None and len(spec.tomograms) > 1 and not os.environ.get(STAGED_ENV)
    if fleet is not None:  # up before the first tomogram is prepared: its style targets meanwhile
        _ahead_plan.style_ahead(spec, root, fleet, plan.count, alone=together, made=targets)
    try:
        reserved = fleet.cpus if fleet is not None else 0.0
        model_json, noise_phases = (
            stages.noise_model(spec, policy, reserved, early)
            if len(ready) < len(spec.tomograms)
            else (None, stages.sum_phases([]))
        )
        clock.lap("noise_model")
        now_ready, beside_phases = stages.prepared_beside_start(early_prep, ready, say)
        for name in now_ready - ready:  # its attributes written beside its NST, which carries its ranges
            meta.write_later(name, early_prep[1].result()["attrs"])
        waited = clock.since()  # the rest of that prepare, after the noise model
        jobs = {"progress": progress, "say": say, "fleet": fleet, "meta": meta}
        nst, prep_failed, prep_phases, prep_seconds = (stages.pipelined if together else stages.staged)(
            spec, root, plan, weights, policy, model_json, jobs, now_ready
        )
        attrs_failed, attrs_written = meta.wait()
        prep_failed = {**prep_failed, **attrs_failed}
        prep_phases = stages.sum_phases([prep_phases, beside_phases, *attrs_written])
        stats, n_actors, nst_seconds, total, done_before = nst
        # pipelined: the prepare stage until the first tomogram's NST (the rest ran beside it)
        clock.lap("prepare", clock.since() - nst_seconds if together else waited + prep_seconds)
        clock.lap("actors_up", clock.since() - nst_seconds)  # pipelined: up during the prepare stage
    finally:
        if fleet is not None:  # stopped already unless the run ends early (a failed noise model)
            fleet.stop()
        meta.wait(limit_s=60)  # a run that ends early leaves no attributes half written
    clock.lap("stylize")
    failed: dict[str, dict[str, str]] = {n: {Stage.PREPARE.value: why} for n, why in prep_failed.items()}
    for (name, tilts), (why, n) in stats.failures.items():
        failed.setdefault(name, {}).update({f"stylize:{i}": f"{why} ({n} attempts)" for i in tilts})
    complete = [
        t.name for t in spec.tomograms if t.name not in failed and done_mask(root[t.name], "faket").all()
    ]
    recs, exported, late, kept = _finish(root, spec, complete, policy, say, unchanged)
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
        "pipelined": together,
        "prepare_seconds": round(waited + prep_seconds, 3),  # the whole prepare stage's wall time
        # the noise model was estimated in the driver while the local Ray started
        "noise_model_beside_start": bool(noise_phases["seconds"])
        and early is not None
        and early.exception() is None,
        # the first tomogram's prepare stage ran in the driver while the local Ray started
        "prepared_beside_start": sorted(now_ready - ready),
        "prepared_before": sorted(ready),  # tomograms a resume found prepared: no task, no noise model
        "tilts_per_second": done_now / nst_seconds if done_now and nst_seconds > 0 else None,
        **stats_summary(stats),
        "seconds": clock.total(),
        "stage_seconds": clock.laps,
        **phase_summary(inside_start.laps, noise_phases, prep_phases),
        "timeline": timeline(clock.began, stats, early_prep, targets, [w["ended_at"] for w in attrs_written]),
        # of the first tomogram's, tilts whose style targets the driver made beside Ray's start
        "style_gram_tilts_made_in_driver": made_tilts(targets),
        "reconstructions": recs,
        "exported": exported,
        "export_kept": kept,  # the MRC files were current already: not written again
        "failed": _record_failures(root, spec, failed),
    }
    # the driver's work beside the start made its tilts in processes, not threads (faket._procs)
    beside_start = summary["noise_model_beside_start"] or summary["prepared_beside_start"]
    summary["tilt_processes"] = bool(beside_start) and processes_pay(len(os.sched_getaffinity(0)))
    root.attrs["last_run"] = {k: v for k, v in summary.items() if k not in ("exported", "compute")}
    if summary["compute"]:  # what the actors computed with (none on a no-op resume)
        root.attrs["compute"] = summary["compute"]
    return summary


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
