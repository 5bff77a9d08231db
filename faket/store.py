"""Zarr (v3) run stores: the tilt-series of many tomograms, written tilt by tilt.

Layout of a store (one per run)::

    run.zarr/                  attrs: format, spec, provenance
      <tomogram>/              attrs: angles, voxel_size, seeds, sources, particles
        noiseless, noisy, content, style, faket    (n, Y, X) float32
        done_<stage>                                (n,) uint8, one chunk per tilt
        reconstruction, labels                      (Z, Y, X) float32

Tilt-series are chunked in tiles of at most 1024 x 1024 with one shard per
tilt, so each tilt is one object with exactly one writer; a tilt is marked
done (its own chunk of ``done_<stage>``) only after its data is written.
Writing a tilt again writes the same shard again: writes are idempotent, as
Ray's at-least-once retries need.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import FaketInputError
from .settings import TILE_GRID

FORMAT = "faket-run-store"
FORMAT_VERSION = 1
TILT_TILE = TILE_GRID
STAGES = ("noiseless", "noisy", "content", "style", "faket")


def _zarr():
    import zarr

    return zarr


def tilt_chunks(height: int, width: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(chunk, shard) shapes for a tilt-series: tiles <= 1024^2, one shard per tilt."""
    cy, cx = min(TILT_TILE, height), min(TILT_TILE, width)
    shard = (1, -(-height // cy) * cy, -(-width // cx) * cx)
    return (1, cy, cx), shard


def open_store(path: str | os.PathLike, mode: str = "a"):
    """Open (or, with mode "a"/"w", create) a run store; returns the root zarr group."""
    zarr = _zarr()
    p = Path(path)
    if mode == "r" and not p.exists():
        raise FaketInputError(f"store {p} does not exist: give the path of a faket run store")
    try:
        root = zarr.open_group(str(p), mode=mode, zarr_format=3)
    except Exception as err:  # zarr raises several types for a foreign folder
        raise FaketInputError(f"{p} is not a readable Zarr v3 store ({type(err).__name__}): "
                              "give a store written by faket") from None
    if mode != "r" and "format" not in root.attrs:
        root.attrs.update({"format": FORMAT, "version": FORMAT_VERSION})
    elif root.attrs.get("format") != FORMAT:
        raise FaketInputError(f"{p} is a Zarr store but not a faket run store")
    return root


def tomograms(root) -> list[str]:
    """Names of the tomogram groups of a store, sorted."""
    return sorted(name for name, _ in root.groups())


def ensure_stack(group, name: str, shape: tuple[int, int, int]):
    """The tilt-series array ``name`` of a tomogram group, created if missing."""
    zarr = _zarr()
    if name in group:
        arr = group[name]
        if tuple(arr.shape) != tuple(shape):
            raise FaketInputError(f"store array {group.path}/{name} has shape {arr.shape}, "
                                  f"expected {shape}: use a new output store")
        return arr
    chunks, shards = tilt_chunks(shape[1], shape[2])
    return group.create_array(name, shape=shape, dtype="float32", chunks=chunks, shards=shards,
                              fill_value=0.0, compressors=zarr.codecs.ZstdCodec(level=1),
                              dimension_names=("tilt", "y", "x"))


def ensure_volume(group, name: str, shape: tuple[int, int, int]):
    """A (Z, Y, X) float32 volume array of a tomogram group, created if missing."""
    if name in group and tuple(group[name].shape) == tuple(shape):
        return group[name]
    chunks = tuple(min(s, c) for s, c in zip(shape, (64, 256, 256)))
    return group.create_array(name, shape=shape, dtype="float32", chunks=chunks, fill_value=0.0,
                              overwrite=True, dimension_names=("z", "y", "x"))


def done_flags(group, stage: str, n: int):
    """The per-tilt done flags of a stage (one chunk per tilt: one writer each)."""
    name = f"done_{stage}"
    if name in group:
        return group[name]
    return group.create_array(name, shape=(n,), dtype="uint8", chunks=(1,), fill_value=0)


def done_mask(group, stage: str) -> np.ndarray:
    """Boolean ``(n,)``: which tilts of a stage are written."""
    name = f"done_{stage}"
    if name not in group:
        n = group[stage].shape[0] if stage in group else 0
        return np.zeros(n, dtype=bool)
    return np.asarray(group[name][:]).astype(bool)


def write_tilt(group, stage: str, index: int, image: np.ndarray) -> None:
    """Write one tilt of a stage, then mark it done (idempotent)."""
    group[stage][index] = np.asarray(image, dtype=np.float32)
    done_flags(group, stage, group[stage].shape[0])[index] = 1


def export_stack(array, path: str | os.PathLike, voxel_size: float = 1.0,
                 volume: bool = False) -> Path:
    """Stream a (n, Y, X) Zarr array to MRC one slice at a time (bounded memory)."""
    from .io import MrcWriter

    with MrcWriter(path, tuple(array.shape), voxel_size=voxel_size, volume=volume) as w:
        for i in range(array.shape[0]):
            w.write(i, np.asarray(array[i]))
    return Path(path)


def export_store(path: str | os.PathLike, out_dir: str | os.PathLike,
                 only: Iterable[str] | None = None, progress=None) -> list[Path]:
    """Export every tomogram (or ``only`` these) of a store to MRC files and .tlt angles.

    Writes ``out_dir/<tomogram>/<array>.mrc`` for each complete array and
    ``angles.tlt``; a stage with tilts not done is refused.
    """
    from .io import write_tlt

    root = open_store(path, mode="r")
    names = tomograms(root)
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise FaketInputError(f"store {path} has no tomogram {missing[0]!r} "
                                  f"(it has: {', '.join(names)})")
        names = [n for n in names if n in set(only)]
    written = []
    out_dir = Path(out_dir)
    for name in names:
        g = root[name]
        vs = float(g.attrs.get("voxel_size", 1.0))
        target = out_dir / name
        target.mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            if stage not in g:
                continue
            mask = done_mask(g, stage)
            if not mask.all():
                raise FaketInputError(f"{name}/{stage} in {path} has {int((~mask).sum())} tilts not "
                                      "done: finish the run first (rerun the same spec)")
            written.append(export_stack(g[stage], target / f"{stage}.mrc", vs))
            if progress is not None:
                progress(1)
        for vol in ("reconstruction", "labels"):
            if vol in g:
                written.append(export_stack(g[vol], target / f"{vol}.mrc",
                                            float(g[vol].attrs.get("voxel_size", vs)), volume=True))
        if "angles" in g.attrs:
            written.append(write_tlt(target / "angles.tlt", np.asarray(g.attrs["angles"])))
    return written
