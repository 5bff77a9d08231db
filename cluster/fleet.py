"""The run's NST actors: how many with which resources, started, warmed up, stopped.

GPU actors start before the prepare stage, so that their start-up (a process,
torch, CUDA, cuDNN, VGG-19 on the device) runs while the CPUs prepare the
tomograms; CPU actors would take the prepare stage's CPUs and start after it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from faket.errors import FaketInputError

from .actor import CRASH_ONCE_ENV, FAIL_TILT_ENV, NSTWorker
from .spec import RunSpec


@dataclass(frozen=True)
class ActorPlan:
    count: int
    use_gpu: bool  # actors reserve GPUs from Ray
    gpus: float  # GPUs per actor
    on_gpu: bool  # actors compute on CUDA (device != "cpu")


def plan_actors(
    spec: RunSpec, actors: int | None, n_gpus: int | None = None, total_cpus: float | None = None
) -> ActorPlan:
    """How many actors with which resources; impossible requests end here, before any work.
    n_gpus, total_cpus: the cluster's (default: Ray's count), or a local Ray's before it starts."""
    res = spec.resources
    if n_gpus is None:
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
    if total_cpus is None:
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
        # placed by a view that still counts a finished prepare task's CPUs as taken, the actors
        # could share a node while another stands idle
        settled_cpus()
    env = {k: os.environ[k] for k in (CRASH_ONCE_ENV, FAIL_TILT_ENV) if os.environ.get(k)}
    if requested():  # the reproducible switch travels to every actor
        env.update(switch_environment())
    if env:
        options["runtime_env"] = {"env_vars": env}
    groups = {"io": 2, "flush": 1, "ahead": 1}  # NSTWorker's threads beside its compute thread
    worker_cls = ray.remote(concurrency_groups=groups)(NSTWorker).options(**options)  # type: ignore[call-overload]
    actors = [
        worker_cls.remote(spec.nst, plan.on_gpu, int(res.cpus_per_actor), res.in_flight + 2) for _ in range(n)
    ]
    # The weights travel with the tasks, nested in a list (the actor fetches them once): no
    # constructor argument lives in the object store, so restarts need nothing kept for them.
    # Put once the actors are asked for: their processes start meanwhile (the actor's process began
    # 0.2 s sooner on this VM: benchmarks/results/weights-put-after-actors-cpu-vm.json).
    weights_ref = ray.put(state_dict)
    return actors, [weights_ref]


@dataclass
class Fleet:
    """Started actors, the weights' reference they need (held for the whole run: a restarted
    actor fetches it) and their warm-up calls."""

    workers: list
    weights: list
    warming: list = field(default_factory=list)
    cpus: float = 0.0  # the CPUs the actors hold

    def ready(self, timeout: float = 300) -> None:
        """Wait for the warm-ups; a failed start is not waited on: its tasks meet the retry policy."""
        if not self.warming:
            return
        for ref in ray.wait(self.warming, num_returns=len(self.warming), timeout=timeout)[0]:
            try:  # retrieved, so that Ray reports nothing unhandled; a broken actor fails its tasks
                ray.get(ref)
            except Exception:
                pass
        self.warming = []

    def stop(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers, self.weights = [], []


def launch(spec: RunSpec, plan: ActorPlan, state_dict: dict, n: int) -> Fleet:
    """``n`` actors started and warming up (torch imported, VGG-19 loaded, on a GPU one small NST)."""
    workers, weights_ref = start_actors(spec, plan, state_dict, n)
    warming = [w.warm_up.remote(weights_ref) for w in workers]
    return Fleet(workers, weights_ref, warming, n * spec.resources.cpus_per_actor)


def free_cpus(tasks: int, reserved: float = 0.0, settle_s: float = 1.0) -> int:
    """CPUs for each of ``tasks`` CPU tasks (threads over tilts): the free ones shared, 1 to 16
    each, and never more than one node has (a task runs on one node: more would wait for ever).

    Ray gives back a finished task's CPUs a moment after its result (about 0.1 s here), so
    the count is read again for up to ``settle_s`` while it is below the cluster's CPUs less
    ``reserved`` (those this run's own actors hold).
    """
    expect = ray.cluster_resources().get("CPU", 1) - reserved
    avail = settled_cpus(reserved, settle_s)
    # never more than the actors leave, wherever they run: a task waiting for their CPUs would
    # wait for ever (the largest node keeps at least its CPUs less all the actors' free)
    free = int(max(1, min(avail, expect))) // max(1, tasks)
    return max(1, min(16, int(largest_node_cpus() - reserved), free))


def settled_cpus(reserved: float = 0.0, settle_s: float = 1.0) -> float:
    """The cluster's free CPUs, read again for up to ``settle_s`` while fewer than all of them
    less ``reserved`` are free: Ray gives back a finished task's CPUs a moment after its result
    (about 0.1 s here, more under load)."""
    expect = ray.cluster_resources().get("CPU", 1) - reserved
    deadline = time.monotonic() + settle_s
    while (avail := ray.available_resources().get("CPU", 0)) < expect and time.monotonic() < deadline:
        time.sleep(0.02)
    return avail


def largest_node_cpus() -> float:
    return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)


def cpu_nodes() -> int:
    """The live nodes with at least one CPU (at least 1)."""
    return max(1, sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1))
