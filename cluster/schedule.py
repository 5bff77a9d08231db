"""Scheduling the per-tilt NST tasks over the actors, with backpressure and the retry policy.

Tasks are (tomograms sharing a style stack, tilt indices). Each actor has at
most ``in_flight`` tasks queued; while one computes, the actor reads the next
one's inputs (``prefetch``). A fault of any kind (the task's error, the
actor's death, a lost object, a dead node) goes through one policy: the
tomograms of a failed task are queued again after the backoff, until their
last attempt, after which they are recorded as failed and the run goes on.
"""

from __future__ import annotations

import collections
import itertools
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ray

from .retry import Attempts, RetryPolicy, describe, is_fault, is_transient
from .spec import RunSpec

Job = tuple[tuple[str, ...], tuple[int, ...]]  # (tomogram names, tilt indices)


@dataclass
class NSTStats:
    """What the actors reported, summed over the run."""

    rows: list[dict] = field(default_factory=list)
    style_tilts: int = 0
    style_tilts_ahead: int = 0  # tilts whose style targets an actor made before its first task
    input_wait: float = 0.0
    input_read: float = 0.0
    compute: float = 0.0
    prefetched: int = 0
    tasks: int = 0
    warm_ups: list[dict] = field(default_factory=list)  # each actor's start, its first task says
    warm_up_at: list[dict] = field(default_factory=list)  # the same on the wall clock
    failures: dict[tuple[str, tuple[int, ...]], tuple[str, int]] = field(default_factory=dict)

    def add(self, out: dict) -> None:
        self.rows.extend(out["rows"])
        self.style_tilts += out.get("style_tilts", 0)
        self.style_tilts_ahead += out.get("style_tilts_ahead", 0)
        self.input_wait += out.get("input_wait_seconds", 0.0)
        self.input_read += out.get("input_read_seconds", 0.0)
        self.compute += out.get("compute_seconds", 0.0)
        self.prefetched += bool(out.get("prefetched"))
        self.tasks += 1
        if "warm_up_seconds" in out:
            self.warm_ups.append(out["warm_up_seconds"])
            self.warm_up_at.append(out.get("warm_up_at", {}))


#: A task's tilt images (tilts x tomograms) at least, when the run is big enough: each task costs
#: the driver and the actor a few milliseconds (three actor calls), a 1024^2 tilt about 30 ms on a GPU.
TASK_IMAGES = 4
#: A task's input bytes at most (CONTENT, NOISY and style): an actor holds ``in_flight`` tasks'
#: inputs, and on a GPU the read-ahead ones are on the device already.
TASK_BYTES = 256 << 20


def tilts_per_task(todo: int, members: int, tilt_bytes: int, nst_batch: int, actors: int) -> int:
    """Tilts per NST task when ``[resources] batch`` is not given: enough tilt images per task that
    its fixed cost is spread (:data:`TASK_IMAGES`), inputs within :data:`TASK_BYTES`, at least four
    tasks per actor (balance at the end of the run), and a whole number of NST batches.

    todo: tilts to do; members: tomograms per task; tilt_bytes: one float32 tilt's bytes.
    """
    per = -(-TASK_IMAGES // members)
    per = min(per, max(1, TASK_BYTES // (3 * tilt_bytes * members)), max(1, todo // (4 * actors)))
    return max(nst_batch, per // nst_batch * nst_batch)


def ramp(per: int, step: int, actors: int, in_flight: int) -> list[int]:
    """The sizes of a run's first tasks, in the order the driver hands them out (``in_flight`` to
    each actor in turn): each actor's first task is one NST batch, its next ones double up to
    ``per`` tilts.

    An actor's first task cannot be read ahead; a small one makes that wait short, and the
    next, larger tasks are read while it computes. Empty when tasks are one batch anyway.
    """
    sizes, size = [], step
    while size < per:
        sizes.append(size)
        size *= 2
    if not sizes:
        return []
    block = (sizes + [per] * in_flight)[: max(in_flight, 1)]
    return block * actors


def taper(per: int, step: int, actors: int) -> list[int]:
    """The sizes of a run's last tasks: ``actors`` tasks of half of ``per``, then of a quarter, ...
    down to one NST batch (whole batches). The actors then finish within about one batch of
    each other, not one task. Empty when tasks are one batch anyway."""
    sizes: list[int] = []
    size = per // 2
    while size >= step:
        level = size // step * step
        if not sizes or sizes[-1] != level:
            sizes += [level] * actors
        size //= 2
    return sizes


def cut(n: int, per: int, head: list[int], tail: list[int], step: int) -> list[int]:
    """Task sizes for ``n`` tilts: ``head`` first, ``tail`` last, tasks of ``per`` between; when
    fewer tilts are left than the tail holds, one NST batch (``step``) each."""
    sizes: list[int] = []
    left = n
    for size in head:
        if left <= 0:
            break
        sizes.append(min(size, left))
        left -= sizes[-1]
    if left > sum(tail):
        middle = left - sum(tail)
        sizes += [min(per, middle - k) for k in range(0, middle, per)] + tail
    else:
        sizes += [min(step, left - k) for k in range(0, left, step)]
    return sizes


def nst_jobs(root, spec: RunSpec, skip: set[str], actors: int = 1) -> tuple[collections.deque, int, int]:
    """The NST tasks of the tilts not done yet; returns (jobs, tilts in all, tilts done before).

    Tomograms styled by the same style stack (same file, same image sizes) go
    together, up to ``share_style`` per task, so that its Gram targets are
    computed once. Tomograms in ``skip`` (not prepared) get no tasks. Each task
    has ``[resources] batch`` tilts, or :func:`tilts_per_task` for ``actors``.
    """
    from faket.store import done_mask, holder

    res = spec.resources
    pending: collections.deque = collections.deque()
    total = done_before = 0
    groups: dict = {}
    masks: dict[str, np.ndarray] = {}  # each tomogram's done flags, read once
    for t in spec.tomograms:
        g = root[t.name]
        mask = masks[t.name] = done_mask(g, "faket")
        total += len(mask)
        done_before += int(mask.sum())
        if t.name not in skip:
            key = (
                str(Path(str(t.style)).resolve()),
                holder(root, g, "style")["style"].shape,
                g["content"].shape,
            )
            groups.setdefault(key, []).append(t.name)
    chunks = [
        ms[m0 : m0 + res.share_style] for ms in groups.values() for m0 in range(0, len(ms), res.share_style)
    ]
    for c, names in enumerate(chunks):
        todo = [int(i) for i in np.flatnonzero(~np.all([masks[n] for n in names], axis=0))]
        h, w = root[names[0]]["content"].shape[1:]
        step = spec.nst.batch_size
        per = res.batch or tilts_per_task(len(todo), len(names), 4 * h * w, step, actors)
        # the run's first tasks grow to full size (the actors wait for their first inputs) and its
        # last ones shrink (the actors finish together)
        head = [] if res.batch or pending else ramp(per, step, actors, res.in_flight)
        tail = [] if res.batch or c < len(chunks) - 1 else taper(per, step, actors)
        k = 0
        for size in cut(len(todo), per, head, tail, step):
            tilts = tuple(todo[k : k + size])
            k += size
            need = tuple(n for n in names if not masks[n][list(tilts)].all())
            pending.append((need, tilts))
    return pending, total, done_before


def _result(ref, names: tuple[str, ...]) -> dict:
    """A task's report, or every tomogram of it failed with the fault's one line."""
    try:
        return ray.get(ref)
    except Exception as err:
        if not is_fault(err):
            raise
        failed = dict.fromkeys(names, describe(err))
        return {"rows": [], "skipped": [], "failed": failed, "transient": is_transient(err)}


class JobFeed:
    """NST jobs of tomograms as their prepare tasks end, for a run whose NST starts before its
    prepare stage ends: the preparing thread calls ``put(name)`` for each tomogram prepared and
    ``close()`` at the end; the scheduler takes their jobs (``make_jobs(names)``) as they come."""

    def __init__(self, make_jobs: Callable[[list[str]], list[Job]]) -> None:
        self._names: queue.Queue = queue.Queue()
        self.make_jobs = make_jobs
        self.open = True

    def put(self, name: str) -> None:
        self._names.put(name)

    def close(self) -> None:
        self._names.put(None)

    def take(self, wait_s: float = 0.0) -> list[Job]:
        """The jobs of the tomograms prepared since the last take; waits up to ``wait_s`` for the
        first of them (none: returns at once)."""
        names: list[str] = []
        while self.open:
            try:
                name = self._names.get(timeout=wait_s) if wait_s > 0 else self._names.get_nowait()
            except queue.Empty:
                break
            wait_s = 0.0
            if name is None:
                self.open = False
            else:
                names.append(name)
        return self.make_jobs(names) if names else []


class NSTScheduler:
    """Keeps every actor fed with ``in_flight`` tasks until all tilts are done or given up."""

    def __init__(
        self,
        workers: list,
        store: str,
        in_flight: int,
        policy: RetryPolicy,
        progress: Callable[[int], None] | None = None,
        weights: list | None = None,
        ranges: Callable[[tuple[str, ...]], dict | None] | None = None,
    ) -> None:
        """weights: ``[ObjectRef of the VGG-19 state dict]``, sent with every task; ranges: the
        stacks' value ranges a task of these tomograms carries (None: the actor reads them from
        the store; see :meth:`faket_cluster._meta.GroupAttributes.for_task`)."""
        self.workers, self.store, self.in_flight = workers, store, in_flight
        self.weights = weights or []
        self.ranges = ranges or (lambda names: None)
        self.attempts = Attempts(policy)
        self.progress = progress
        self.stats = NSTStats()
        self.queued: dict = {}  # flush ref -> (actor index, job, stylize ref)
        # stylize refs of tasks not computed yet: only these count against ``in_flight``, so
        # a task whose results are being written leaves room for another to be read ahead
        self.computing: dict = {}  # stylize ref -> actor index
        self.tickets = itertools.count()
        self.load = [0] * len(workers)
        self.delayed: list[tuple[float, Job]] = []

    def _submit(self, pending: collections.deque) -> None:
        now = time.monotonic()
        for item in [d for d in self.delayed if d[0] <= now]:
            self.delayed.remove(item)
            pending.append(item[1])
        for w, worker in enumerate(self.workers):
            while pending and self.load[w] < self.in_flight:
                names, tilts = pending.popleft()
                ticket = next(self.tickets)
                known = self.ranges(names)
                task = worker.stylize.remote(
                    self.store, list(names), list(tilts), self.weights, ticket, known
                )
                worker.prefetch.remote(self.store, list(names), list(tilts), known)  # read while it waits
                # the report comes once the results are stored; the next task computes meanwhile
                self.queued[worker.flush.remote(ticket)] = (w, (names, tilts), task)
                self.computing[task] = w
                self.load[w] += 1

    def _collect(self, ref) -> None:
        w, (names, tilts), task = self.queued.pop(ref)
        self._computed(task)
        out = _result(ref, names)
        _result(task, names)  # retrieved, so that Ray reports no unhandled error of a lost task
        self.stats.add(out)
        if self.progress is not None:
            self.progress(len(out["rows"]) + len(out["skipped"]) * len(tilts))
        retry, at = [], 0.0
        for name, why in out["failed"].items():
            key = (name, tilts)
            retry_at = self.attempts.record(key, why, out.get("transient", False))
            if retry_at is None:
                self.stats.failures[key] = (why, self.attempts.failed[key])
            else:
                retry.append(name)
                at = max(at, retry_at)
        if retry:
            self.delayed.append((at, (tuple(retry), tilts)))

    def run(self, pending: collections.deque, feed: JobFeed | None = None) -> NSTStats:
        """Every job of ``pending``, and of ``feed`` until it closes (tomograms prepared meanwhile)."""
        feeding = lambda: feed is not None and feed.open  # noqa: E731
        while pending or self.queued or self.delayed or feeding():
            if feed is not None:
                pending.extend(feed.take())
            self._submit(pending)
            if not self.queued:
                due = min((at for at, _ in self.delayed), default=time.monotonic() + 0.5)
                wait = max(0.0, due - time.monotonic())
                if feed is not None and feed.open:
                    pending.extend(feed.take(wait_s=max(wait, 1e-3)))  # idle until a tomogram is prepared
                else:
                    time.sleep(wait)
                continue
            refs = [*self.computing, *self.queued]
            timeout = 0.05 if feeding() else 0.5 if self.delayed else None
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
            for ref in ready:
                if ref in self.computing:
                    self._computed(ref)
                else:
                    self._collect(ref)
        return self.stats

    def _computed(self, task) -> None:
        """A task's stylize call returned (or failed): its actor may take another."""
        w = self.computing.pop(task, None)
        if w is not None:
            self.load[w] -= 1
