"""The NST actor: VGG-19 held on one device, tilts read from the run store and written back.

It calls :mod:`faket.nst` for each batch of tilts and holds no NST arithmetic of its own.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from typing import Any

import numpy as np
import ray

from ._ahead import StyleAhead
from ._buffers import Buffers, read_inputs
from ._clock import process_started_at
from ._hooks import (
    CRASH_ONCE_ENV,
    FAIL_TILT_ENV,
    HOLD_ENV,
    KERNEL_ENV,
    mark_ahead_done,
    maybe_crash,
    maybe_hold,
    stand_in,
)

__all__ = ["CRASH_ONCE_ENV", "FAIL_TILT_ENV", "HOLD_ENV", "KERNEL_ENV", "NSTWorker"]

#: Tasks whose results may wait for the writer at once (see NSTWorker.stylize).
WRITES_QUEUED = 2
#: Python's thread switch interval in an actor (default 5 ms). The thread that launches a GPU's
#: kernels holds Python's lock most of the time; each read or write step of the io threads then
#: waits up to this long for it. engine_feed.py --kernel spin at 1024^2 on 2 cores: the
#: kernel's busy share 0.65 with 5 ms, 0.75 with 1 ms (three runs each).
SWITCH_INTERVAL_S = 0.001


# --------------------------------------------------------------------------- actors
class NSTWorker:
    """Holds VGG-19 on its device; stylises tilts read from the store, writes them back.

    I/O overlaps compute: :meth:`prefetch` runs in the actor's "io" threads
    (a Ray concurrency group of two), so the driver asks it to read the
    queued tasks' inputs while the current one computes; results are written
    tilt by tilt by two writer threads while the next task computes, and
    :meth:`flush` reports a task once its writes are done.
    """

    def __init__(self, settings, use_gpu: bool, threads: int = 1, keep: int = 4) -> None:
        """keep: tasks whose inputs are kept read ahead at most (more than the driver queues).

        The weights come with each task (:meth:`stylize`), not as a constructor argument:
        a restarted actor then needs nothing that Ray would have to keep for its constructor.
        """
        import threading
        from concurrent.futures import ThreadPoolExecutor

        from ._clock import StageClock

        self._warm_clock: StageClock | None = StageClock()  # until the first task reports it
        import torch

        from faket.reproducible import PIN_THREADS, compute_record, requested
        from faket.store import keep_freed_chunk_memory

        keep_freed_chunk_memory()  # every task writes tilts: their chunk buffers are reused
        sys.setswitchinterval(SWITCH_INTERVAL_S)

        # as many threads as the CPUs Ray gave this actor; the switch fixes the count
        torch.set_num_threads(PIN_THREADS if requested() else max(1, threads))
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.settings = settings
        self._transfer: Any = None  # built on the first task, from the weights it carries
        self.compute = compute_record(self.device, settings.precision)
        self.pid = os.getpid()
        self.tasks_started = 0  # for the HOLD_ENV test hook
        self.node = ray.get_runtime_context().get_node_id()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]  # what Ray assigned this actor
        self._lock = threading.Lock()
        self._prefetched: dict = {}  # task key -> {"done": Event, "data": inputs or None}
        self._first_read = threading.Event()  # set once the first task has its inputs
        self._taken: set = set()  # keys the compute thread read itself
        self._tickets: dict = {}  # stylize ticket -> {"done": Event, "out", "writes"} until flushed
        self._stores: dict = {}  # store path -> CachedGroup
        self._keep = keep
        self._warmed = threading.Event()  # set once warm_up has ended
        self._ahead = StyleAhead()  # style targets made before the first task (see style_ahead)
        # tilts are written side by side (each its own shard): a write is mostly the kernel copying
        # it into the page cache and the chunks' encoding, both outside Python's lock
        self._writer = ThreadPoolExecutor(2, thread_name_prefix="faket-write")
        self._readers = ThreadPoolExecutor(3, thread_name_prefix="faket-read")
        self._buffers = Buffers()
        self._writing: collections.deque = collections.deque()  # write futures of recent tasks
        self._warm_clock.lap("init")  # torch imported, the actor set up

    def _root(self, store: str):
        """The run store, its groups and arrays looked up once for all tasks (see CachedGroup)."""
        from faket.store import CachedGroup, open_store

        with self._lock:
            if store not in self._stores:
                self._stores[store] = CachedGroup(open_store(store))
            return self._stores[store]

    def _read(self, store: str, names: list[str], tilts: list[int], ranges: dict | None) -> dict:
        """A task's inputs from the store (see :func:`faket_cluster._buffers.read_inputs`)."""
        return read_inputs(self._root(store), names, tilts, self._readers, self._buffers.take, ranges)

    def warm_up(self, weights: list) -> int:
        """Load VGG-19 and, on a GPU, run one 64^2 NST: CUDA's, cuBLAS's and cuDNN's start-up
        happen here, before the first task (the driver times the NST stage from here)."""
        from faket import nst, store  # noqa: F401  (imported here, not in the first task)

        clock = self._warm_clock
        lap = clock.lap if clock is not None else (lambda name: None)
        try:
            store.warm_up()
            lap("imports")
            if os.environ.get(KERNEL_ENV):
                return self.pid
            transfer = self._model(weights)
            lap("model")
            if self.device == "cuda":
                tile = np.random.default_rng(0).random((1, 64, 64), dtype=np.float32)
                transfer.stylize_batch(tile, [tile], tile)
                lap("first_nst")
            return self.pid
        finally:
            self._warmed.set()

    @ray.method(concurrency_group="ahead")
    def style_ahead(
        self,
        store: str,
        holder: str,
        style_path: str,
        size: list[int],
        tasks: list[list[int]],
        weights: list,
        made: dict | None = None,
    ) -> None:
        """Make the style Gram targets of the tasks to come (``tasks``: their tilts, in order) of
        the tomogram group ``holder`` (whose style stack comes from ``style_path``) once warm,
        until the first task starts (best effort: see :mod:`faket_cluster._ahead`). made: those
        the driver made meanwhile (:func:`faket_cluster._ahead.made_beside_start`), kept at once."""
        if made:
            try:
                self._ahead.adopt(made, self.device)
            except Exception:  # the tasks make what is not kept (as below)
                pass
        self._warmed.wait(timeout=600)
        if os.environ.get(KERNEL_ENV) or self.tasks_started:
            return
        try:
            transfer = self._model(weights)
            self._ahead.make(transfer, self.device, (store, holder), style_path, (size[0], size[1]), tasks)
        except Exception:  # the tasks make what is not made here
            pass
        mark_ahead_done()

    @ray.method(concurrency_group="io")
    def prefetch(self, store: str, names: list[str], tilts: list[int], ranges: dict | None = None) -> None:
        """Read a queued task's inputs in the io thread (best effort: errors surface in stylize);
        ranges: the stacks' value ranges the task carries (see :meth:`stylize`)."""
        import threading

        key = (store, tuple(names), tuple(tilts))
        # the first task's inputs first: read-ahead that starts with them would slow them down
        self._first_read.wait(timeout=30)
        with self._lock:
            if key in self._taken:
                self._taken.discard(key)
                return
            if key in self._prefetched:
                return
            while len(self._prefetched) >= self._keep:  # stale: a task retried elsewhere
                self._prefetched.pop(next(iter(self._prefetched)))
            entry = self._prefetched[key] = {"done": threading.Event(), "data": None, "seconds": 0.0}
        t0 = time.perf_counter()
        try:
            entry["data"] = self._upload(self._read(store, names, tilts, ranges))
            entry["seconds"] = time.perf_counter() - t0
        except Exception:
            pass
        finally:
            entry["done"].set()

    def _inputs(
        self, store: str, names: list[str], tilts: list[int], ranges: dict | None
    ) -> tuple[dict, float, float]:
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
        try:
            if data is None:
                t1 = time.perf_counter()
                data = self._upload(self._read(store, names, tilts, ranges))
                read = time.perf_counter() - t1
        finally:
            self._first_read.set()
        return data.ready(), time.perf_counter() - t0, read

    def _upload(self, data: dict):
        """On a GPU the inputs go to the device as they are read (a side stream, pinned memory)."""
        from faket.nst import upload

        return upload(data, "cpu" if os.environ.get(KERNEL_ENV) else self.device)

    def _model(self, weights: list):
        """The VGG-19 of this actor, loaded once from ``[ObjectRef of the state dict]``."""
        if self._transfer is None:
            from faket.nst import StyleTransfer

            self._transfer = StyleTransfer(ray.get(weights[0]), self.settings, device=self.device)
        return self._transfer

    def stylize(
        self,
        store: str,
        names: list[str],
        tilts: list[int],
        weights: list,
        ticket: int,
        ranges: dict | None = None,
    ) -> dict:
        """Stylise ``tilts`` of every tomogram in ``names`` (see :meth:`_stylize`); ranges: the
        stacks' value ranges, where the driver sends them (None: read from the store's attributes).

        Returns as soon as the results are off the GPU, their writes still
        running: the driver asks :meth:`flush` with the same ticket for the
        report, and the next task computes meanwhile (writes stay off the
        GPU's critical path; a tilt counts as done only once flush answers).
        """
        entry = self._ticket(ticket)
        try:
            entry["out"], entry["writes"], entry["inputs"] = self._stylize(
                store, names, tilts, weights, ranges
            )
        except BaseException as err:
            entry["error"] = err
            raise
        finally:
            entry["done"].set()
        # at most WRITES_QUEUED tasks' results wait for the writer: past that the next task
        # waits here (the driver reads ahead while results are written, so they could pile up)
        self._writing.append([f for futs in entry["writes"].values() for f in futs])
        while len(self._writing) > WRITES_QUEUED:
            for fut in self._writing.popleft():
                fut.exception()  # waits; a failed write is flush's to report
        return {"ticket": ticket}

    @ray.method(concurrency_group="flush")
    def flush(self, ticket: int) -> dict:
        """The report of the :meth:`stylize` task with this ticket, once its results are stored."""
        entry = self._ticket(ticket)
        entry["done"].wait()
        with self._lock:
            self._tickets.pop(ticket, None)
        if "error" in entry:
            raise entry["error"]
        report = _finish(entry["out"], entry["writes"])
        self._buffers.give(entry["inputs"])  # read, computed on and written: the next reads reuse them
        return report

    def _ticket(self, ticket: int) -> dict:
        import threading

        with self._lock:
            return self._tickets.setdefault(ticket, {"done": threading.Event()})

    def _stylize(
        self, store: str, names: list[str], tilts: list[int], weights: list, ranges: dict | None
    ) -> tuple[dict, dict, list]:
        """Stylise ``tilts`` of every tomogram in ``names``; they share one style stack.

        The tilts go through the network in NST batches of ``batch_size``; the
        style tilts' Gram targets are computed once per batch and serve every
        tomogram (bit for bit what each would compute alone). A tomogram whose
        tilts are all done already (a retry) is skipped; one that fails is
        reported in ``failed`` while the others go on. weights: ``[ObjectRef of the
        state dict]`` (nested, so Ray passes the reference; read on the first task).
        Returns (``{"rows": [...], "skipped": [name, ...], "failed": {name: why},
        "style_tilts": n, "input_wait_seconds": s, "input_read_seconds": s, "compute_seconds": s,
        "prefetched": bool}``, ``{name: the futures of its tilts' writes}``, the input arrays read for it).
        """
        import torch

        from faket.nst import nst_batches, stylize_tilts
        from faket.store import write_tilts

        self.tasks_started += 1
        started = time.time()
        self._ahead.stop()  # the targets made ahead so far are all there are
        maybe_hold(self.tasks_started)
        idx = list(tilts)
        data, waited, read = self._inputs(store, names, idx, ranges)
        root = self._root(store)
        style = data["style"]
        kernel = os.environ.get(KERNEL_ENV, "")
        identity = kernel == "identity" or kernel.startswith(("sleep:", "spin:", "launch:"))
        transfer = None if identity else self._model(weights)
        t_compute = time.perf_counter()
        # the task's tilts go through the network in NST batches (settings.batch_size), each with
        # its style tilts' Gram targets: what an in-process run of the same batches computes
        targets: list = []
        ahead = 0
        if transfer is not None:
            batches = nst_batches(len(idx), transfer.settings.batch_size)
            targets, ahead = self._ahead.targets(transfer, store, data, idx, batches)
        bad = os.environ.get(FAIL_TILT_ENV, "")
        out: dict = {
            "rows": [],
            "skipped": [],
            "failed": {},
            "style_tilts": len(idx),
            "style_tilts_ahead": ahead,
            "input_wait_seconds": waited,
            "input_read_seconds": read,
            "prefetched": waited < read,
        }
        if self._warm_clock is not None:  # the first task: where the actor's start went
            out["warm_up_seconds"] = {"pid": self.pid, **self._warm_clock.laps}
            if self._ahead.tilts:  # and the style targets it made before this task
                out["warm_up_seconds"]["style_ahead"] = round(self._ahead.seconds, 3)
            # the same on the wall clock, for the run's timeline (cluster/_clock.actor_timeline)
            at = {"process": process_started_at(), "clock": self._warm_clock.began, **self._ahead.span}
            out["warm_up_at"] = {**at, "first_task": started}
            self._warm_clock = None
        writes: dict[str, list] = {}

        for name in names:
            t0 = time.perf_counter()
            g = root[name]
            if data["done"][name]:  # read with the inputs
                out["skipped"].append(name)
                continue
            try:
                if bad and any(bad == f"{name}:{i}" for i in idx):
                    raise RuntimeError(f"injected failure of {bad}")
                m = data["members"][name]
                ranges = {
                    "content": tuple(map(np.float32, m["ranges"]["content"])),
                    "init": tuple(map(np.float32, m["ranges"]["noisy"])),
                }
                if transfer is None:  # the identity kernel (KERNEL_ENV)
                    stand_in(kernel, len(idx))
                    result, losses = np.asarray(m["noisy"], np.float32), np.zeros(len(idx))
                else:
                    c, n = m["content"], m["noisy"]
                    parts = [
                        stylize_tilts(transfer, c[b], n[b], style[b], ranges, style_targets=t)
                        for b, t in zip(batches, targets)
                    ]
                    result, losses = (np.concatenate(p) for p in zip(*parts))
                maybe_crash()
                writes[name] = [write_tilts(g, "faket", idx, result, self._writer.submit)]
            except Exception as err:  # reported per tomogram; the driver retries it
                out["failed"][name] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
                continue
            if self.device == "cuda":
                peak = torch.cuda.max_memory_allocated()
            else:
                import resource

                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            seconds = time.perf_counter() - t0
            out["rows"] += [
                {
                    "tomogram": name,
                    "tilt": i,
                    "loss": float(losses[k]),
                    "seconds": seconds,
                    "peak_memory_bytes": int(peak),
                    "pid": self.pid,
                    "node": self.node,
                    "device": self.device,
                    "gpu_ids": self.gpu_ids,
                    "compute": self.compute,
                    "tile_size": None
                    if transfer is None
                    else transfer.settings.tile_size,  # OOM fallback too
                }
                for k, i in enumerate(idx)
            ]
        out["compute_seconds"] = time.perf_counter() - t_compute  # Gram targets, NST, results to host
        inputs = [data["style"]] + [a for m in data["members"].values() for a in (m["content"], m["noisy"])]
        return out, writes, inputs


def _finish(out: dict, writes: dict) -> dict:
    """A task's report once its writes are done: a tomogram whose write failed is failed."""
    for name, futs in writes.items():
        try:
            for fut in futs:
                fut.result()
        except Exception as err:
            out["failed"][name] = f"write: {type(err).__name__}: {err}".splitlines()[0][:200]
            out["rows"] = [row for row in out["rows"] if row["tomogram"] != name]
    return out
