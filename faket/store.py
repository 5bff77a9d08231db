"""Zarr (v3) run stores: the tilt-series of many tomograms, written tilt by tilt.

Layout of a store (one per run)::

    run.zarr/                  attrs: format, version, spec, compute, last_run
      <tomogram>/              attrs: angles, voxel_size, seeds, sources, particles,
                                      settings (per stage), failures, ome (NGFF 0.5)
        noiseless, noisy, content, style, faket    (n, Y, X) float32 (style: see below)
        done_<stage>                                (n,) uint8, one chunk per tilt
        reconstruction                              (Z, Y, X) float32
        reconstruction_2x, reconstruction_4x        its binned levels (NGFF multiscale)
        labels/classes/0                            (Z, Y, X) float32, an NGFF image-label
        done_reconstruction, done_labels            (1,) uint8

Each tomogram group is an OME-Zarr image (:mod:`faket.ngff`).

Tomograms made from the same source (volume or tilts, and angles) keep one
copy of their noiseless stack, and tomograms styled by the same file one copy
of its style stack: the first of them holds it, the others name that tomogram
in their ``held_by`` attribute (``{"noiseless": ..., "style": ...}``, see
:func:`holder`).

The driver creates every array and done flag before any worker runs
(:func:`create_stack`, :func:`create_volume`); workers only write
(:func:`write_tilt`, :func:`write_volume`), so no two processes ever race to
create the same array.

Tilt-series are chunked in tiles of at most 1024 x 1024 with one shard per
tilt, so each tilt is one object with exactly one writer; a tilt is marked
done (its own chunk of ``done_<stage>``) only after its data is written.
Writing a tilt again writes the same shard again: writes are idempotent, as
Ray's at-least-once retries need.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._flags import read_flags, set_flags  # done flags read and set without zarr's Python
from ._shards import keep_freed_chunk_memory as keep_freed_chunk_memory  # for long-lived store writers
from ._shards import read_tilt as read_tilt  # part of this module's API: one tilt, decoded on threads
from ._shards import write_tilt_data
from ._sink import StoreSink as StoreSink  # part of this module's API: the run store as a sink
from ._sink import TiltReader as TiltReader
from ._sink import TiltWriter as TiltWriter
from ._sink import put_tilt as _put_tilt
from .errors import FaketInputError
from .settings import TILE_GRID

FORMAT = "faket-run-store"
#: Version 2: every array and done flag is created up front by the driver, labels and
#: reconstructions have done flags, each stage records the settings it ran with.
#: Version 3: OME-Zarr (NGFF 0.5) metadata, labels as an NGFF image-label, reconstruction
#: pyramids, CRC32C checksums of every tile.
FORMAT_VERSION = 3
TILT_TILE = TILE_GRID
STAGES = ("noiseless", "noisy", "content", "style", "faket")
#: Stacks that tomograms made from the same inputs share, one copy held by one of them.
SHARED_STACKS = ("noiseless", "style")
VOLUMES = ("labels", "reconstruction")
#: Where each volume lives in its tomogram group: the labels as an NGFF image-label.
VOLUME_PATHS = {"labels": "labels/classes/0", "reconstruction": "reconstruction"}
#: Each volume's data type: labels are integers (NGFF image-labels must be).
VOLUME_DTYPES = {"labels": "uint16", "reconstruction": "float32"}
#: The reconstruction's binned levels (NGFF multiscale), beside it as reconstruction_<f>x.
PYRAMID = (2, 4)


def level_name(factor: int) -> str:
    """The array of the reconstruction binned by ``factor``."""
    return f"reconstruction_{factor}x"


def volume(group, name: str):
    """A volume's array (``labels`` or ``reconstruction``) in a tomogram group."""
    return group[VOLUME_PATHS[name]]


def has_volume(group, name: str) -> bool:
    """Whether a tomogram group holds the volume ``name``."""
    return VOLUME_PATHS[name] in group


def tilt_codec():
    """The tilt stacks' codecs: the compressor chosen by ``benchmarks/bench_codec.py`` (on noisy
    float32 tilts Blosc LZ4 with byte shuffle writes as fast as no codec and keeps 0.75 of the
    bytes; zstd level 1: 0.82 at 1.7x the write and 3x the read time), then a CRC32C checksum
    of each tile, so that damaged bytes fail to decode instead of reading as data."""
    codecs = _zarr().codecs
    return (codecs.BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"), codecs.Crc32cCodec())


def _zarr():
    import zarr

    return zarr


def tilt_chunks(height: int, width: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(chunk, shard) shapes for a tilt-series: tiles <= 1024^2, one shard per tilt."""
    cy, cx = min(TILT_TILE, height), min(TILT_TILE, width)
    shard = (1, -(-height // cy) * cy, -(-width // cx) * cx)
    return (1, cy, cx), shard


def open_store(path: str | os.PathLike, mode: str = "a"):
    """Open (or, with mode "a"/"w", create) a run store; returns the root zarr group.

    The store's format version is checked: a store of another version is refused
    with one line, as its layout differs.
    """
    zarr = _zarr()
    p = Path(path)
    if mode == "r" and not p.exists():
        raise FaketInputError(f"store {p} does not exist: give the path of a faket run store")
    if mode != "r" and not p.exists():
        from ._paths import check_output_path

        check_output_path(p / "zarr.json", role="store")  # its folder can be made and written
    try:
        root = zarr.open_group(str(p), mode=mode, zarr_format=3)
    except Exception as err:  # zarr raises several types for a foreign folder
        raise FaketInputError(
            f"{p} is not a readable Zarr v3 store ({type(err).__name__}): give a store written by faket"
        ) from None
    if mode != "r" and "format" not in root.attrs:
        root.attrs.update({"format": FORMAT, "version": FORMAT_VERSION})
    elif root.attrs.get("format") != FORMAT:
        raise FaketInputError(f"{p} is a Zarr store but not a faket run store")
    version = root.attrs.get("version")
    if version != FORMAT_VERSION:
        raise FaketInputError(
            f"store {p} has format version {version}, this faket reads version "
            f"{FORMAT_VERSION}: finish it with the faket that wrote it, or use a new store"
        )
    return root


def tomograms(root) -> list[str]:
    """Names of the tomogram groups of a store, sorted."""
    return sorted(name for name, _ in root.groups())


def _check_shape(group, name: str, shape: tuple[int, ...]):
    arr = group[name]
    if tuple(arr.shape) != tuple(shape):
        raise FaketInputError(
            f"store array {group.path}/{name} has shape {tuple(arr.shape)}, "
            f"expected {tuple(shape)}: use a new output store"
        )
    return arr


def _flags(group, name: str, n: int):
    flag = f"done_{name}"
    if flag in group:
        return _check_shape(group, flag, (n,))
    return group.create_array(flag, shape=(n,), dtype="uint8", chunks=(1,), fill_value=0)


def holder(root, group, stack: str):
    """The group that holds stack ``stack`` (one of :data:`SHARED_STACKS`) of tomogram group
    ``group`` of store ``root``: the group itself, or the tomogram its ``held_by`` attribute
    names for that stack."""
    if stack in group:
        return group
    owner = group.attrs.get("held_by", {}).get(stack)
    if owner is None or owner not in root:
        raise FaketInputError(
            f"store group {group.path} has no {stack} stack and names none to share "
            f"(held_by: {owner!r}): rerun the spec that made it"
        )
    return root[owner]


def create_stack(group, name: str, shape: tuple[int, int, int]):
    """Create a tilt-series array and its per-tilt done flags (the driver, before any worker).

    An existing array of the same shape is kept; another shape is refused.
    """
    if name in group:
        arr = _check_shape(group, name, shape)
    else:
        chunks, shards = tilt_chunks(shape[1], shape[2])
        arr = group.create_array(
            name,
            shape=shape,
            dtype="float32",
            chunks=chunks,
            shards=shards,
            fill_value=0.0,
            compressors=tilt_codec(),
            dimension_names=("tilt", "y", "x"),
        )
    _flags(group, name, shape[0])
    return arr


def _volume_array(group, path: str, shape: tuple[int, ...], dtype: str = "float32"):
    if path in group:
        return _check_shape(group, path, shape)
    chunks = tuple(min(s, c) for s, c in zip(shape, (64, 256, 256)))
    return group.create_array(
        path,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        fill_value=0,
        compressors=(_zarr().codecs.ZstdCodec(level=1), _zarr().codecs.Crc32cCodec()),
        dimension_names=("z", "y", "x"),
    )


def create_volume(group, name: str, shape: tuple[int, int, int]):
    """Create a (Z, Y, X) volume (a float32 reconstruction with its binned levels) and its done
    flag; same rules as :func:`create_stack`."""
    arr = _volume_array(group, VOLUME_PATHS[name], shape, VOLUME_DTYPES[name])
    if name == "reconstruction":
        for f in PYRAMID:
            _volume_array(group, level_name(f), tuple(max(1, s // f) for s in shape))
    _flags(group, name, 1)
    return arr


def done_mask(group, stage: str, tilts: Sequence[int] | None = None) -> np.ndarray:
    """Boolean ``(n,)``: which tilts of a stage (or, ``(1,)``, whether a volume) are written.

    tilts: read only these tilts' flags (each flag is its own chunk, one file per
    tilt, so a worker asking about its few tilts reads a few files, not n).
    """
    name = f"done_{stage}"
    if name not in group:
        n = group[stage].shape[0] if stage not in VOLUMES and stage in group else 1
        return np.zeros(n if tilts is None else len(tilts), dtype=bool)
    return read_flags(group[name], tilts).astype(bool)


def _flag_array(group, name: str):
    try:
        return group[f"done_{name}"]
    except KeyError:
        raise FaketInputError(
            f"store group {group.path} has no done flags for {name}: the driver "
            "creates every array first (a store of an older faket?)"
        ) from None


def warm_up() -> None:
    """Zarr's one-time start-up (its event loop, the codecs' set-up: about 0.2 s) done now, on a
    tilt stack in memory, not in a worker's first read of the run store."""
    zarr = _zarr()
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    create_stack(group, "warm", (1, 64, 64))
    write_tilt(group, "warm", 0, np.zeros((64, 64), np.float32))
    read_tilt(group["warm"], 0)
    done_mask(group, "warm", [0])


def write_tilt(group, stage: str, index: int, image: np.ndarray) -> None:
    """Write one tilt of a stage, then mark it done (idempotent; creates nothing)."""
    flags = _flag_array(group, stage)
    _put_tilt(group[stage], flags, index, image)


def write_tilts(group, stage: str, indices: Sequence[int], images: np.ndarray, submit=None) -> Any:
    """Write tilts ``indices`` of a stage from ``images`` ``(len(indices), H, W)``, then mark
    them done in one step (one flag update instead of one per tilt; idempotent).

    submit: an executor's ``submit`` to write the tilts side by side (each tilt is its own
    shard); the flags are set once all are written. Returns the future of the whole (with
    ``submit``) or None.
    """
    flags = _flag_array(group, stage)
    arr = group[stage]
    rows = [np.asarray(img, dtype=np.float32) for img in images]
    run = submit or _call_now
    # the tilts are queued before the step that waits for them: it never waits on a queued one
    parts = [run(write_tilt_data, arr, int(i), img) for i, img in zip(indices, rows)]

    def mark() -> None:
        for p in parts:
            p.result()
        set_flags(flags, indices)

    whole = run(mark)
    if submit is None:
        whole.result()  # raises what a write raised
        return None
    return whole


def _call_now(fn, *args) -> Future:
    """``fn(*args)`` run here, as an executor's ``submit`` would run it elsewhere."""
    done: Future = Future()
    try:
        done.set_result(fn(*args))
    except BaseException as err:
        done.set_exception(err)
    return done


class CachedGroup:
    """A zarr group whose members are looked up once: each lookup reads metadata files, and a
    worker that reads and writes tilts task after task would repeat them (about 1 ms each)."""

    def __init__(self, group) -> None:
        self._group = group
        self._members: dict = {}

    def __getitem__(self, key: str):
        member = self._members.get(key)
        if member is None:
            member = self._group[key]
            if isinstance(member, _zarr().Group):
                member = CachedGroup(member)
            self._members[key] = member
        return member

    def __contains__(self, key: str) -> bool:
        return key in self._members or key in self._group

    def __getattr__(self, name: str):
        return getattr(self._group, name)


def write_volume(group, name: str, data: np.ndarray) -> None:
    """Write a whole volume (a reconstruction with its binned levels), then mark it done
    (idempotent; creates nothing)."""
    flags = _flag_array(group, name)
    arr = volume(group, name)
    values = np.asarray(data)
    if arr.dtype.kind in "iu" and values.dtype.kind == "f":
        values = np.rint(values)  # labels read from a float MRC
    arr[:] = values.astype(arr.dtype)
    if name == "reconstruction":
        from .ngff import write_pyramid

        write_pyramid(group, values)
    set_flags(flags, [0])


def reset_done(group, name: str) -> None:
    """Clear the done flags of an array, so that its stage runs again."""
    if f"done_{name}" in group:
        flags = group[f"done_{name}"]
        flags[:] = np.zeros(flags.shape, dtype=np.uint8)


def changed_settings(recorded: dict, now: dict) -> list[str]:
    """Keys whose values differ between a stage's recorded settings and the current ones."""
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
