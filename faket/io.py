"""File I/O: MRC stacks and volumes, IMOD ``.tlt`` angles (provenance records: :mod:`faket.provenance`).

Arrays follow the project's conventions: a tilt-series is ``(n_tilts, Y, X)``
float32, a volume ``(Z, Y, X)`` float32, voxel sizes in Angstrom. Inputs are
opened as read-only memory maps so one tilt can be read without reading the
stack; outputs are written to a temporary name beside the target and renamed
only when complete, so a failed run never leaves a half-written file or
damages an existing one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from ._paths import (  # noqa: F401  (faket.io is the I/O API: output paths re-exported)
    _tmp_name,
    atomic_dir,
    atomic_path,
    check_output_dir,
    check_output_path,
    refuse_input_overwrite,
)
from .errors import FaketInputError


# --------------------------------------------------------------------------- MRC in
@dataclass
class Stack:
    """A lazily read MRC stack or volume.

    data: read-only memory map, ``(n, Y, X)`` for stacks, ``(Z, Y, X)`` volumes.
    voxel_size: Angstrom per pixel (x, y, z); 0 when the header has none.
    value_range: float32 (min, max) of the data, found by the finite check in
        the same pass (None when it was not run or the data are integers).
    """

    path: Path
    data: np.ndarray
    voxel_size: tuple[float, float, float]
    _handle: Any
    value_range: tuple[np.float32, np.float32] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def tilt(self, i: int) -> np.ndarray:
        """One tilt (or Z slice) as a float32 array ``(Y, X)``, read on demand."""
        return np.asarray(self.data[i], dtype=np.float32)

    def read(self) -> np.ndarray:
        """The whole array as float32 in memory."""
        return np.array(self.data, dtype=np.float32)

    def close(self) -> None:
        self._handle.close()

    def mapped(self) -> MappedTilts:
        """Its tilts as a :class:`MappedTilts`: what a pool process reads them through."""
        return MappedTilts(str(self.path), self.shape)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MappedTilts:
    """An MRC file's data ``(n, H, W)``, tilt by tilt (``tilts[i]``: what its memory map gives),
    through a memory map each process opens once: it pickles as its path, so that processes of a
    pool (:mod:`faket._procs`) read the tilts themselves. For files checked already
    (:func:`open_mrc`) that do not change while it is read."""

    def __init__(self, path: str, shape: tuple[int, ...]) -> None:
        self.path, self.shape = path, shape

    def __getitem__(self, index: int) -> np.ndarray:
        return _mapped(self.path).data[index]


@functools.lru_cache(maxsize=8)
def _mapped(path: str) -> Any:
    """The file opened read-only as a memory map, kept open for this process's life."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mrcfile.mmap(path, mode="r", permissive=False)


def open_mrc(
    path: str | os.PathLike,
    *,
    role: str = "input",
    ndim: int = 3,
    check_finite: bool = True,
    workers: int = 1,
) -> Stack:
    """Open an MRC file lazily and validate it.

    role names the input in error messages ("content", "style", ...).
    ndim: 3 for a tilt-series or volume, 2 for a single image, 0 for either.
    check_finite streams through the data once (tilt by tilt, on ``workers`` threads) to
    refuse NaN/Inf, and keeps the data's min and max from that pass (``value_range``).
    Raises FaketInputError with one line naming the file and the problem.
    """
    p = Path(path)
    if not p.exists():
        raise FaketInputError(f"{role} file {p} does not exist: check the path")
    if p.is_dir():
        raise FaketInputError(f"{role} file {p} is a directory, not an MRC file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = mrcfile.mmap(p, mode="r", permissive=False)
    except (ValueError, OSError, EOFError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FaketInputError(
            f"{role} file {p} is not a readable MRC file ({msg}): "
            "give a complete MRC file (e.g. re-export it)"
        ) from None
    data = handle.data
    if data is None:
        handle.close()
        raise FaketInputError(f"{role} file {p} has no data block: give a complete MRC file")
    if ndim and data.ndim != ndim:
        handle.close()
        what = {3: "a stack (n_tilts, Y, X)", 2: "a single 2D image"}[ndim]
        raise FaketInputError(
            f"{role} file {p} is {data.ndim}D with shape {tuple(data.shape)} but {what} is needed"
        )
    if data.dtype.kind not in "fiu":
        handle.close()
        raise FaketInputError(f"{role} file {p} has non-real data ({data.dtype}): convert it to float32")
    vs = handle.voxel_size
    stack = Stack(p, data, (float(vs.x), float(vs.y), float(vs.z)), handle)
    if check_finite and data.dtype.kind == "f":
        lo, hi, bad = _finite_range(data, workers)
        if bad is not None:
            stack.close()
            where = f"tilt/slice {bad}" if data.ndim == 3 else "the image"
            raise FaketInputError(
                f"{role} file {p} contains NaN or Inf values in {where}: clean the input first"
            )
        stack.value_range = (lo, hi)
    return stack


def _finite_range(data: np.ndarray, workers: int = 1) -> tuple[np.float32, np.float32, int | None]:
    """float32 (min, max) of ``data`` ``(n, H, W)`` or ``(H, W)``, one tilt at a time on ``workers``
    threads, and the index of the first tilt with NaN or Inf (they show in its min or max) or None."""
    from ._threads import for_each

    parts = [data] if data.ndim != 3 else [data[i] for i in range(data.shape[0])]
    if not parts:  # no tilts: the empty range
        return np.float32(np.inf), np.float32(-np.inf), None
    lo, hi = np.empty(len(parts), np.float32), np.empty(len(parts), np.float32)

    def one(i: int) -> None:
        lo[i], hi[i] = np.float32(parts[i].min()), np.float32(parts[i].max())

    for_each(one, range(len(parts)), workers)
    bad = ~(np.isfinite(lo) & np.isfinite(hi))
    first = int(np.argmax(bad)) if bad.any() else None
    return np.float32(lo.min()), np.float32(hi.max()), first


def read_mrc(path: str | os.PathLike, *, role: str = "input", ndim: int = 3) -> np.ndarray:
    """Read a whole MRC file as float32 after validation (small files only)."""
    with open_mrc(path, role=role, ndim=ndim) as s:
        return s.read()


# --------------------------------------------------------------------------- MRC out
class MrcWriter:
    """Stream a float32 MRC stack or volume to disk slice by slice.

    The file is a memory map at a temporary name; header statistics are
    accumulated per slice (never by re-reading the file), and the file is
    renamed onto ``path`` by :meth:`close` only if every slice was written.
    Use as a context manager; an exception inside discards the file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shape: tuple[int, ...],
        *,
        voxel_size: float | tuple[float, float, float] = 1.0,
        volume: bool = False,
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self._tmp = _tmp_name(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # an interrupt (Ctrl-C, SIGTERM) here, before the with block, must not leave the file
            self._mrc = mrcfile.new_mmap(self._tmp, shape=self.shape, mrc_mode=2, overwrite=True)
            if volume:
                self._mrc.set_volume()
            else:
                self._mrc.set_image_stack()
            self._mrc.voxel_size = voxel_size
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        self._written = np.zeros(self.shape[0], dtype=bool)
        self._min = np.full(self.shape[0], np.inf)
        self._max = np.full(self.shape[0], -np.inf)
        self._sum = np.zeros(self.shape[0])
        self._sumsq = np.zeros(self.shape[0])

    def write(self, i: int, image: np.ndarray) -> None:
        """Write slice ``i`` (shape ``(Y, X)``)."""
        a = np.asarray(image, dtype=np.float32)
        if a.shape != self.shape[1:]:
            raise ValueError(f"slice {i} has shape {a.shape}, expected {self.shape[1:]}")
        self._mrc.data[i] = a
        flat = a.ravel()
        self._min[i], self._max[i] = flat.min(), flat.max()
        self._sum[i] = flat.sum(dtype=np.float64)
        self._sumsq[i] = np.einsum("i,i->", flat, flat, dtype=np.float64)
        self._written[i] = True

    def write_all(self, array: np.ndarray) -> None:
        for i in range(array.shape[0]):
            self.write(i, array[i])

    def _finish(self) -> None:
        if not self._written.all():
            missing = np.flatnonzero(~self._written)[:5].tolist()
            raise RuntimeError(f"{self.path}: slices {missing}... were never written")
        n = float(np.prod(self.shape))
        h = self._mrc.header
        mean = self._sum.sum() / n
        h.dmin, h.dmax, h.dmean = self._min.min(), self._max.max(), mean
        with np.errstate(invalid="ignore", over="ignore"):
            h.rms = np.sqrt(max(self._sumsq.sum() / n - mean * mean, 0.0))
        self._mrc.flush()
        self._mrc.close()

    def close(self) -> None:
        """Finish the header and rename the file onto its final path."""
        try:
            self._finish()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the temporary file; the final path is left as it was."""
        try:
            with contextlib.suppress(Exception):
                self._mrc.close()
        finally:  # also where an interrupt comes during the close
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> MrcWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_mrc(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    voxel_size: float | tuple[float, float, float] = 1.0,
    volume: bool = False,
) -> Path:
    """Write a 3D float32 array atomically as MRC (stack, or volume if ``volume``)."""
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {arr.shape}")
    with MrcWriter(path, arr.shape, voxel_size=voxel_size, volume=volume) as w:
        w.write_all(arr)
    return Path(path)


# --------------------------------------------------------------------------- angles
def read_tlt(path: str | os.PathLike, *, expected: int | None = None) -> np.ndarray:
    """Read IMOD ``.tlt`` tilt angles (degrees, one per line) as float64 ``(n,)``.

    expected: the number of tilts the angles must match (e.g. the stack's).
    """
    p = Path(path)
    if not p.exists():
        raise FaketInputError(f"angles file {p} does not exist: check the path")
    values = []
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise FaketInputError(
            f"angles file {p} cannot be read as text ({err}): give an IMOD .tlt file, one angle per line"
        ) from None
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        try:
            v = float(s.split()[0])
        except ValueError:
            raise FaketInputError(
                f"angles file {p} line {lineno} is not a number ({s[:30]!r}): "
                "give one angle in degrees per line"
            ) from None
        if not np.isfinite(v):
            raise FaketInputError(f"angles file {p} line {lineno} is not finite: fix the angle")
        values.append(v)
    if not values:
        raise FaketInputError(f"angles file {p} holds no angles: give one angle per line")
    if expected is not None and len(values) != expected:
        raise FaketInputError(
            f"angles file {p} has {len(values)} angles but the tilt-series "
            f"has {expected} tilts: give one angle per tilt"
        )
    return np.asarray(values, dtype=np.float64)


def write_tlt(path: str | os.PathLike, angles: np.ndarray) -> Path:
    """Write tilt angles (degrees) as an IMOD ``.tlt`` file, atomically, at full float precision."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{float(a)!r}\n" for a in np.asarray(angles, dtype=float)))  # full precision
    return Path(path)


def angles_range(start: float, stop: float, step: float) -> np.ndarray:
    """Tilt angles from start to stop inclusive in steps (degrees)."""
    n = int(round((stop - start) / step)) + 1
    return start + step * np.arange(n, dtype=np.float64)
