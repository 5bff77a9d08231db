"""The stages of a simulation, named once, and the prepare stage over a small storage interface.

prepare (phantom, projection, noise) -> stylize (NST) -> reconstruct -> export.
Every front end (the CLI, the demos, the Ray engine) names stages with
:class:`Stage`; the run store records each stage's settings and done flags.

The prepare stage is written once here, over :class:`TiltSink`: memory for
``faket demo``, MRC writers for ``faket noise apply``, the Zarr run store
(``faket.store.StoreSink``) for the engine. The NST stage is
``faket.nst.stylize_tilts`` (used by ``iter_stylize`` and the engine's actor),
reconstruction ``faket.reconstruction.reconstruct``.
"""

from __future__ import annotations

from concurrent.futures import Executor
from enum import Enum
from typing import Any, Callable, Mapping, Protocol, Sequence, cast

import numpy as np

from ._threads import for_each


class Stage(str, Enum):
    """A stage of the method, in order."""

    PREPARE = "prepare"
    STYLIZE = "stylize"
    RECONSTRUCT = "reconstruct"
    EXPORT = "export"

    @property
    def arrays(self) -> tuple[str, ...]:
        """The run-store arrays this stage writes (export writes files, not arrays)."""
        return STAGE_ARRAYS[self]

    def and_later(self) -> list[Stage]:
        """This stage and every stage after it (what a restart of it must redo)."""
        order = list(Stage)
        return order[order.index(self) :]


STAGE_ARRAYS: dict[Stage, tuple[str, ...]] = {
    Stage.PREPARE: ("noiseless", "noisy", "content", "style", "labels"),
    Stage.STYLIZE: ("faket",),
    Stage.RECONSTRUCT: ("reconstruction",),
    Stage.EXPORT: (),
}


# --------------------------------------------------------------------------- storage
class TiltSink(Protocol):
    """Where a stage puts tilts: memory, MRC writers, or the run store (``faket.store.StoreSink``).

    ``todo(name)`` lists the tilt indices of stack ``name`` still to make (a
    resumed run store skips done ones); ``put`` stores one ``(H, W)`` float32 tilt.
    A sink that takes puts from several threads at once (``workers > 1`` below)
    must store each tilt apart, as the run store does (one shard per tilt).
    """

    def todo(self, name: str) -> Sequence[int]: ...

    def put(self, name: str, index: int, image: np.ndarray) -> None: ...


class PoolSink(TiltSink, Protocol):
    """A sink whose tilts processes of a pool can put (``faket.store.StoreSink``): ``writer(names)``
    pickles and puts there (returning what ``note`` takes), ``note`` records each put here."""

    def writer(self, names: Sequence[str]) -> Any: ...

    def note(self, name: str, index: int, extremes: Any) -> None: ...


class MemorySink:
    """Stacks in memory: ``arrays[name]`` is ``(n, H, W)`` float32, made on the first put."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrays: dict[str, np.ndarray] = {}

    def todo(self, name: str) -> Sequence[int]:
        return [] if name in self.arrays else range(self.n)

    def put(self, name: str, index: int, image: np.ndarray) -> None:
        if name not in self.arrays:
            self.arrays[name] = np.empty((self.n, *image.shape), np.float32)
        self.arrays[name][index] = image


class WriterSink:
    """Tilts streamed into open MRC writers (``faket.io.MrcWriter``), one per stack name."""

    def __init__(self, writers: Mapping[str, Any], n: int) -> None:
        self.writers, self.n = writers, n

    def todo(self, name: str) -> Sequence[int]:
        return range(self.n)

    def put(self, name: str, index: int, image: np.ndarray) -> None:
        self.writers[name].write(index, image)


# --------------------------------------------------------------------------- prepare
def copy_tilts(sink: TiltSink, name: str, read: Callable[[int], np.ndarray], workers: int = 1) -> None:
    """Put tilts of stack ``name`` that ``sink`` still needs, read one by one with ``read(i)``."""
    todo = [int(i) for i in sink.todo(name)]
    for_each(lambda i: sink.put(name, i, np.asarray(read(i), np.float32)), todo, workers)


def prepare_noiseless(
    sink: TiltSink,
    angles: np.ndarray,
    *,
    volume: np.ndarray | None = None,
    tilts: Callable[[int], np.ndarray] | None = None,
    device: Any = "cpu",
    workers: int = 1,
) -> None:
    """The ``noiseless`` stack: projections of ``volume`` (Z, Y, X) at ``angles`` (degrees),
    or the given noiseless tilts ``tilts(i)`` (H, W); only the tilts ``sink`` still needs.
    workers: threads that put tilts (see :func:`faket._threads.for_each`)."""
    if volume is None:
        if tilts is None:
            raise ValueError("prepare_noiseless needs a volume or tilts")
        copy_tilts(sink, "noiseless", tilts, workers)
        return
    todo = list(sink.todo("noiseless"))
    if todo:
        from .projection import project  # torch: seconds to import, only to project

        series = project(volume, angles, device=device).cpu().numpy()
        copy_tilts(sink, "noiseless", lambda i: series[i], workers)


def prepare_noise(
    sink: TiltSink,
    noiseless: Callable[[int], np.ndarray],
    model: Any,
    seed: int,
    modalities: Sequence[str] = ("noisy", "content", "baseline"),
    content_sigma: float = 0.25,
    advance: Callable[[], None] | None = None,
    workers: int = 1,
    pool: Executor | None = None,
) -> None:
    """NOISY, CONTENT (sigma x ``content_sigma``) and BASELINE (order-0 curves) tilts of one
    tomogram from its noiseless tilts ``noiseless(i)`` (H, W) and a ``faket.noise.NoiseModel``;
    the draws depend on (seed, tilt) only, so any subset of tilts can be made in any order,
    also on ``workers`` threads at once (see :func:`faket._threads.for_each`). Each noiseless
    tilt is read, and its noise drawn, once for all the modalities it still needs;
    ``advance()`` once per tilt made.

    pool: processes (:func:`faket._procs.tilt_pool`) that make the tilts instead of threads,
    the same values: for a ``faket.store.StoreSink`` and a ``noiseless`` that pickles
    (``faket.store.TiltReader``)."""
    base = model.baseline()
    todo: dict[int, list[str]] = {}
    for m in modalities:
        for i in sink.todo(m):
            todo.setdefault(int(i), []).append(m)
    if pool is not None:
        recipe = (model, seed, content_sigma, base)
        _noise_in_pool(pool, cast(PoolSink, sink), noiseless, todo, recipe, advance)
        return

    def one(i: int) -> int:
        # one noise draw and one standardised tilt serve every modality
        threads = min(workers, len(todo))
        return len(_noise_tilt(noiseless, sink, i, model, seed, todo[i], content_sigma, base, threads)[1])

    for_each(one, sorted(todo), workers, advance)


def _noise_in_pool(
    pool: Executor,
    sink: PoolSink,
    noiseless: Callable[[int], np.ndarray],
    todo: dict[int, list[str]],
    recipe: tuple,
    advance: Callable[[], None] | None,
) -> None:
    """:func:`prepare_noise`'s tilts ``todo`` ({tilt: its modalities}) made in ``pool``'s
    processes, each put there by the sink's writer; recipe: (model, seed, content_sigma, the
    baseline curves)."""
    from ._procs import each_in

    writer = sink.writer(sorted({m for mods in todo.values() for m in mods}))

    def noted(made: tuple[int, dict]) -> None:
        i, extremes = made
        for m, lo_hi in extremes.items():
            sink.note(m, i, lo_hi)
            if advance is not None:
                advance()

    model, seed, content_sigma, base = recipe
    jobs = [(noiseless, writer, i, model, seed, todo[i], content_sigma, base) for i in sorted(todo)]
    each_in(pool, _noise_tilt, jobs, noted)


def _noise_tilt(
    noiseless: Callable[[int], np.ndarray],
    sink: Any,
    i: int,
    model: Any,
    seed: int,
    modalities: Sequence[str],
    content_sigma: float,
    base: dict,
    threads: int = 1,
) -> tuple[int, dict]:
    """Tilt ``i``'s ``modalities`` put into ``sink`` (a sink, or a store's ``TiltWriter`` in a
    pool process): one noise draw and one standardised tilt serve them all. Returns ``i`` and
    what each put returned. threads: how many tilts are made at once (the blocks' size)."""
    from .noise import apply_tilt_modalities

    tilt = noiseless(i)
    made = apply_tilt_modalities(tilt, i, model, seed, modalities, content_sigma, base, threads=threads)
    return i, {m: sink.put(m, i, image) for m, image in made.items()}
