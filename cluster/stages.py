"""The run's stages between the start and the finish: the noise model, the prepare stage and
the NST stage, one after the other (:func:`staged`) or, with GPU actors up and several
tomograms, each tomogram's NST as soon as it is prepared (:func:`pipelined`).

The engine's driver (:mod:`faket_cluster.engine`) runs them; they plan and schedule Ray
tasks and move no image data.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Callable, Iterable

import ray

from faket._threads import beside
from faket.pipeline import Stage

from ._meta import GroupAttributes
from .fleet import ActorPlan, Fleet, cpu_nodes, free_cpus, largest_node_cpus, launch
from .layout import holders
from .retry import RetryPolicy, run_tasks
from .spec import RunSpec
from .tasks import estimate_noise_model, remote_functions, spec_attrs

if TYPE_CHECKING:
    from .schedule import JobFeed


class RunFailed(RuntimeError):
    """Tilts kept failing; the message names the first tomogram and tilt."""


def noise_model_beside_start(spec: RunSpec, address: str | None) -> Future | None:
    """The noise model estimated in a thread of the driver while a local Ray starts (5.9-7.4 s
    on this 2-core VM, about 5 CPU-seconds of it busy); None where the run joins a running
    cluster or loads its model from a file. The estimate is the Ray task's, on all of this
    machine's CPUs. The driver asks only where a tomogram is not prepared yet."""
    if spec.noise_model is not None or address or spec.resources.address or os.environ.get("RAY_ADDRESS"):
        return None
    if ray.is_initialized():
        return None
    from faket._procs import pool_if_it_pays

    pairs = [(str(a), str(b)) for a, b in spec.noise_pairs]
    workers = len(os.sched_getaffinity(0))

    def work() -> dict:
        # on many cores the tilts go to processes: the driver's threads left to Ray's start
        with pool_if_it_pays(workers) as pool:
            return estimate_noise_model(pairs, spec.noise_order, workers, pool)

    # where it fails, the Ray task tries again, under the run's retry policy
    return beside(work, "faket-noise-model")


def prepare_beside_start(spec: RunSpec, early: Future, laid_out: Future) -> tuple[str, Future]:
    """The first tomogram's prepare stage in a thread of the driver, once the fresh store's
    layout (``laid_out``) is there, while a local Ray starts, on all of this machine's CPUs: its
    noiseless, style and labels phases beside the noise model's estimate (``early``), its noise
    once that is made. Returns the tomogram's name and the Future of its
    :func:`faket_cluster.tasks.prepare_tomogram` result, whose group attributes are left to the
    driver (``attrs``, written beside the NST: :mod:`faket_cluster._meta`). Where it fails, the
    prepare stage's Ray task tries again under the run's retry policy."""
    from faket._procs import pool_if_it_pays

    from .tasks import prepare_tomogram

    first = spec.tomograms[0]  # it holds its own noiseless and style stacks (layout.holders)
    workers = len(os.sched_getaffinity(0))

    def work() -> dict:
        # on many cores the noise phase's tilts go to processes, started while the layout ends
        with pool_if_it_pays(workers) as pool:
            laid_out.result()  # what the layout raised, if it failed (the driver raises it too)
            # what the estimate raised, if it failed, once the phases before the noise are written
            model = lambda: early.result()["model"]  # noqa: E731
            return prepare_tomogram(
                str(spec.store), first, model, spec.content_sigma, workers, pool, write_attrs=False
            )

    return first.name, beside(work, "faket-prepare")


def prepared_beside_start(
    early_prep: tuple[str, Future] | None, ready: frozenset[str], say
) -> tuple[frozenset[str], dict[str, dict[str, float]]]:
    """``ready`` with the tomogram :func:`prepare_beside_start` prepared, once it is (waits), and
    its wall and CPU seconds per phase (:func:`sum_phases`); ``ready`` alone where there was none
    or it failed."""
    if early_prep is None:
        return ready, sum_phases([])
    name, future = early_prep
    err = future.exception()
    if err is not None:
        say(f"preparing {name} beside Ray's start failed ({type(err).__name__}: {err}); a task tries again")
        return ready, sum_phases([])
    say(f"{name} prepared beside Ray's start")
    return ready | {name}, sum_phases([future.result()])


def noise_model(
    spec: RunSpec, policy: RetryPolicy, reserved: float = 0.0, early: Future | None = None
) -> tuple[dict, dict[str, dict[str, float]]]:
    """The run's noise model as JSON: loaded from the spec's file, or estimated from its pairs
    (``early``: by :func:`noise_model_beside_start`; otherwise, or where that failed, by a Ray
    task; reserved: CPUs this run's actors hold meanwhile); and the estimate's wall and CPU
    seconds per phase (:func:`sum_phases`; none where the model was loaded)."""
    from faket.noise import NoiseModel

    _, estimate, _, _ = remote_functions()

    if spec.noise_model is not None:
        return NoiseModel.load(spec.noise_model).to_json(), sum_phases([])
    if early is not None and early.exception() is None:
        out = early.result()
        return out["model"], sum_phases([out])
    pairs = [(str(a), str(b)) for a, b in spec.noise_pairs]
    cpus = free_cpus(1, reserved)
    task = estimate.options(num_cpus=cpus)
    results, failures = run_tasks(lambda _: task.remote(pairs, spec.noise_order, cpus), ["noise"], policy)
    if failures:
        raise RunFailed(
            f"the noise model could not be estimated ({failures['noise']}): "
            "fix the cause and rerun the same spec"
        )
    return results["noise"]["model"], sum_phases([results["noise"]])


def prepared(root, spec: RunSpec) -> frozenset[str]:
    """The tomograms whose prepare stage is complete in the store: every tilt of its stacks (and
    the labels) written and the stacks' value ranges recorded. A resume skips their prepare
    tasks, and the noise model too when every tomogram is prepared."""
    from faket.store import SHARED_STACKS, done_mask

    held = holders(root, spec)

    def complete(name: str) -> bool:
        g = root[name]
        if "ranges" not in g.attrs:
            return False
        arrays = [(g, a) for a in Stage.PREPARE.arrays if a not in SHARED_STACKS and a in g]
        for stack in SHARED_STACKS:  # the copies it shares (or holds)
            by = held[name][stack]
            if by not in root or stack not in root[by]:
                return False
            arrays.append((root[by], stack))
        style_ranges = root[held[name]["style"]].attrs.get("ranges", {})
        return "style" in style_ranges and all(done_mask(x, a).all() for x, a in arrays)

    return frozenset(t.name for t in spec.tomograms if t.name in root and complete(t.name))


class _StyleGate:
    """Passes each prepared tomogram on once the tomogram holding its style stack is prepared
    too (``holders``: tomogram -> the style stack's holder, :func:`faket_cluster.layout.holders`)."""

    def __init__(self, holders: dict[str, str], on_prepared: Callable[[str], None] | None) -> None:
        self.holders, self.on_prepared = holders, on_prepared
        self.done: set[str] = set()
        self.waiting: list[str] = []

    def __call__(self, name: str) -> None:
        self.done.add(name)
        self.waiting.append(name)
        passed = [n for n in self.waiting if self.holders[n] in self.done]
        self.waiting = [n for n in self.waiting if n not in passed]
        for n in passed:
            if self.on_prepared is not None:
                self.on_prepared(n)

    def failed(self, failures: dict[str, str]) -> dict[str, str]:
        """``failures`` and the tomograms whose style stack's holder is among them."""
        out = dict(failures)
        for n, holder in self.holders.items():
            if holder in failures and n not in failures:
                out[n] = f"its style stack is held by tomogram {holder}, which was not prepared"
        return out


def prepare_stage(
    spec: RunSpec,
    root,
    policy: RetryPolicy,
    model_json: dict | None,
    say,
    meta: GroupAttributes,
    reserved: float = 0.0,
    at_once: int | None = None,
    on_prepared: Callable[[str], None] | None = None,
    ready: frozenset[str] = frozenset(),
) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """Each tomogram's prepare task (meta: the driver's attributes, which learns each task's value
    ranges; reserved: CPUs this run's actors hold meanwhile; at_once: tomograms prepared at a
    time, sharing the free CPUs, default all; ``on_prepared(name)`` as each succeeds and the
    tomogram holding its style stack has; ``ready``: tomograms prepared already (:func:`prepared`
    or beside Ray's start), which get no task, only their spec's attributes refreshed). A
    tomogram whose noiseless stack another one holds is prepared after it. Returns the
    tomograms that failed (or whose holder did) and the tasks' wall and CPU seconds per phase,
    summed over tomograms (:func:`sum_phases`)."""
    from faket.io import read_tlt

    prepare, _, _, _ = remote_functions()
    store = str(spec.store)
    gate = _StyleGate(meta.style_holders, on_prepared)
    for t in spec.tomograms:
        if t.name in ready:
            meta.refresh(t.name, spec_attrs(t, read_tlt(t.angles)))
            gate(t.name)
    by_name = {t.name: t for t in spec.tomograms if t.name not in ready}
    if not by_name:
        say(f"all {len(ready)} tomogram(s) in {store} are prepared")
        return {}, sum_phases([])
    before = f", {len(ready)} prepared" if ready else ""
    say(f"preparing {len(by_name)} tomogram(s) in {store}{before}")
    assert model_json is not None  # the driver estimates the noise model when a tomogram needs it
    # a tomogram whose noiseless stack another one holds makes its noise from that copy: after it
    after = {
        n: by["noiseless"]
        for n, by in meta.held_by.items()
        if n in by_name and by.get("noiseless") in by_name
    }
    # the CPUs shared by the tasks that can start at once (the later ones queue for them)
    first = len(by_name) - len(after)
    cpus = free_cpus(min(at_once or first, first), reserved)
    task = prepare.options(num_cpus=cpus)

    def on_result(name: str, result: dict) -> None:
        meta.learn(name, result)
        gate(name)

    done, prep_failed = run_tasks(
        lambda n: task.remote(store, by_name[n], model_json, spec.content_sigma, cpus),
        list(by_name),
        policy,
        at_once,
        on_result,
        after,
    )
    prep_failed = gate.failed(prep_failed)
    return prep_failed, sum_phases(done.values())


def sum_phases(results: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Each phase's wall seconds (``seconds``) and its processes' CPU seconds (``cpu_seconds``)
    summed over tasks' results (or sums made before) that hold them."""
    out: dict[str, dict[str, float]] = {"seconds": {}, "cpu_seconds": {}}
    for result in results:
        for key, into in out.items():
            for phase, secs in result.get(key, {}).items():
                into[phase] = round(into.get(phase, 0.0) + secs, 3)
    return out


def nst_stage(
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
    meta: GroupAttributes | None = None,
):
    """Every tilt not done yet through the actors (``fleet``: started already, or started here;
    ``feed``: the jobs of tomograms prepared meanwhile, see :func:`pipelined`; ``meta``: the
    value ranges the tasks carry, where the driver holds them); returns (stats, actors, seconds,
    total, done before)."""
    from .schedule import NSTScheduler, NSTStats, nst_jobs

    pending, total, done_before = nst_jobs(root, spec, skip, plan.count)
    say(f"{total} tilts, {done_before} already done, {total - done_before} to do, {plan.count} actor(s)")
    if fleet is None and feed is None and not pending:  # nothing to do: no actor, no weights to send
        return NSTStats(), 0, 0.0, total, done_before
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
            fleet.workers,
            str(spec.store),
            spec.resources.in_flight,
            policy,
            advance,
            fleet.weights,
            meta.for_task if meta is not None else None,
        )
        stats = scheduler.run(pending, feed)
    seconds = time.perf_counter() - t_nst
    n = len(fleet.workers)
    fleet.stop()
    return stats, n, seconds, total, done_before


def pipelined(
    spec: RunSpec,
    root,
    plan: ActorPlan,
    weights,
    policy: RetryPolicy,
    model_json: dict | None,
    jobs: dict,
    ready: frozenset[str] = frozenset(),
) -> tuple:
    """The prepare stage beside the NST stage, for GPU actors started already and several
    tomograms: tomograms are prepared one at a time per node, on all its free CPUs, and each
    one's NST tasks are queued as soon as its prepare task ends (its value ranges are known
    only then), so the GPUs work while the rest is prepared. ``jobs``: keyword arguments of
    :func:`nst_stage` (progress, say, fleet, meta). Returns (:func:`nst_stage`'s tuple, the
    prepare stage's failures, its phases' wall and CPU seconds, its wall seconds)."""
    from .schedule import JobFeed, nst_jobs

    names = [t.name for t in spec.tomograms]

    def make_jobs(ready: list[str]) -> list:
        for n in ready:  # OME-Zarr metadata, now that voxel sizes and labels are known
            jobs["meta"].describe(n)
        return list(nst_jobs(root, spec, set(names) - set(ready), plan.count)[0])

    feed = JobFeed(make_jobs)
    outcome: dict = {}

    def prepare_all() -> None:
        t0 = time.perf_counter()
        try:
            reserved = jobs["fleet"].cpus
            outcome["prepare"] = prepare_stage(
                spec,
                root,
                policy,
                model_json,
                jobs["say"],
                jobs["meta"],
                reserved,
                cpu_nodes(),
                feed.put,
                ready,
            )
        except BaseException as err:  # raised in the driver's thread, below
            outcome["error"] = err
        finally:
            outcome["seconds"] = time.perf_counter() - t0
            feed.close()

    thread = threading.Thread(target=prepare_all, name="faket-prepare-stage", daemon=True)
    thread.start()
    nst = nst_stage(spec, root, plan, weights.state_dict, policy, skip=set(names), feed=feed, **jobs)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return nst, *outcome["prepare"], outcome["seconds"]


def early_fleet(spec: RunSpec, root, plan: ActorPlan, state_dict: dict) -> Fleet | None:
    """GPU actors started now, before the prepare stage (see :mod:`faket_cluster.fleet`), one per
    tilt to do at most; None for CPU actors or when every tilt is done."""
    from faket.store import done_mask

    if not plan.use_gpu:
        return None
    todo = sum(int((~done_mask(root[t.name], "faket")).sum()) for t in spec.tomograms)
    n = min(plan.count, todo)
    if not n or largest_node_cpus() - n * spec.resources.cpus_per_actor < 1:
        return None  # nothing to do, or the actors might leave the prepare stage no CPU
    return launch(spec, plan, state_dict, n)


def staged(
    spec: RunSpec,
    root,
    plan: ActorPlan,
    weights,
    policy: RetryPolicy,
    model_json: dict | None,
    jobs: dict,
    ready: frozenset[str] = frozenset(),
) -> tuple:
    """The prepare stage, then the NST stage; arguments and result as :func:`pipelined`."""
    t0 = time.perf_counter()
    reserved = jobs["fleet"].cpus if jobs["fleet"] is not None else 0.0
    prep_failed, prep_phases = prepare_stage(
        spec, root, policy, model_json, jobs["say"], jobs["meta"], reserved, ready=ready
    )
    prep_seconds = time.perf_counter() - t0
    for t in spec.tomograms:  # OME-Zarr metadata, now that voxel sizes and labels are known
        if t.name not in prep_failed:
            jobs["meta"].describe(t.name)
    nst = nst_stage(spec, root, plan, weights.state_dict, policy, skip=set(prep_failed), **jobs)
    return nst, prep_failed, prep_phases, prep_seconds
