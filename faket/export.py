"""Exports of a run store into the layouts cryo-ET tools read (``faket export``).

Every export is checked before anything is written (the store, the tomograms, the stages
the format needs, every needed tilt present), is written into a temporary folder that
replaces the output folder whole when complete, and puts a provenance ``.json`` beside
each file it writes. Formats: ``mrc`` (MRC stacks and volumes, ``.tlt``), and those of
:mod:`faket._formats` (IMOD, RELION, DeepFinder, copick, the CryoET Data Portal).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import FaketInputError
from .store import STAGES, VOLUMES, done_mask, has_volume, open_store, tomograms, volume


@dataclass
class Export:
    """What one export writes into: the store, its tomograms, and the temporary folder."""

    store: Path
    root: Any  # the store's zarr group
    names: list[str]
    folder: Path  # temporary; renamed onto the output folder when complete
    target: Path  # the output folder
    written: list[Path] = field(default_factory=list)

    def add(self, out: Path, what: dict) -> Path:
        """Record a written file and write ``<out>.json`` beside it: where it came from and how
        the store made it."""
        from .provenance import provenance, write_provenance

        root = self.root
        g = root[what["tomogram"]] if "tomogram" in what else None
        record = write_provenance(
            out,
            provenance(
                {**what, "settings": g.attrs.get("settings") if g is not None else None},
                inputs={"store": self.store.resolve()},
                weights=root.attrs.get("weights"),
                seeds={"noise": g.attrs.get("seed")} if g is not None else None,
                extra={"store_compute": root.attrs.get("compute"), "spec": root.attrs.get("spec")},
            ),
        )
        self.written += [out, record]
        return out

    def angles(self, name: str, out: Path) -> Path:
        """A tomogram's tilt angles as an IMOD ``.tlt`` (full precision), with its provenance."""
        from .io import write_tlt

        write_tlt(out, np.asarray(self.root[name].attrs["angles"]))
        return self.add(out, {"tomogram": name, "array": "angles"})


@dataclass(frozen=True)
class Format:
    """An export format: what it needs of each tomogram, and its writer."""

    needs: Callable[[Any], list[str]]  # group -> the arrays it reads (all must be done)
    write: Callable[[Export], None]
    help: str


def voxel_size(g) -> float:
    """The tilt-series' pixel size of a tomogram group, in Angstrom."""
    return float(g.attrs.get("voxel_size", 1.0))


def volume_voxel_size(g, name: str) -> float:
    """A volume's voxel size (the reconstruction's includes its binning), in Angstrom."""
    return float(volume(g, name).attrs.get("voxel_size", voxel_size(g)))


def export_stack(array, path: str | os.PathLike, voxel: float = 1.0, volume: bool = False) -> Path:
    """Stream a (n, Y, X) Zarr array to MRC one slice at a time (bounded memory)."""
    from .io import MrcWriter

    with MrcWriter(path, tuple(array.shape), voxel_size=voxel, volume=volume) as w:
        for i in range(array.shape[0]):
            w.write(i, np.asarray(array[i]))
    return Path(path)


def _mrc_needs(g) -> list[str]:
    return [s for s in STAGES if s in g]


def _write_mrc(ex: Export) -> None:
    for name in ex.names:
        g = ex.root[name]
        target = ex.folder / name
        target.mkdir(parents=True, exist_ok=True)
        for stage in _mrc_needs(g):
            out = export_stack(g[stage], target / f"{stage}.mrc", voxel_size(g))
            ex.add(out, {"tomogram": name, "array": stage})
        for vol in VOLUMES:
            if has_volume(g, vol) and done_mask(g, vol).all():
                out = export_stack(
                    volume(g, vol), target / f"{vol}.mrc", volume_voxel_size(g, vol), volume=True
                )
                ex.add(out, {"tomogram": name, "array": vol})
        if "angles" in g.attrs:
            ex.angles(name, target / "angles.tlt")


FORMATS: dict[str, Format] = {
    "mrc": Format(_mrc_needs, _write_mrc, "<tomogram>/<stage>.mrc, volumes, angles.tlt"),
}


def _formats() -> dict[str, Format]:
    from ._formats import _formats as more

    return {**FORMATS, **more()}


def _select(root, store: Path, only: Iterable[str] | None) -> list[str]:
    names = tomograms(root)
    wanted = list(only or [])
    missing = [n for n in wanted if n not in names]
    if missing:
        raise FaketInputError(f"store {store} has no tomogram {missing[0]!r} (it has: {', '.join(names)})")
    return [n for n in names if n in set(wanted)] if wanted else names


def check_ready(root, store: Path, names: list[str], needs: Callable[[Any], list[str]]) -> None:
    """Refuse (one line) a tomogram whose needed arrays are absent, not done, or damaged."""
    from .store_check import verify_group

    for name in names:
        g = root[name]
        needed = needs(g)
        for array in needed:
            present = has_volume(g, array) if array in VOLUMES else array in g
            left = int((~done_mask(g, array)).sum()) if present else 0
            if not present or left:
                why = "absent" if not present else f"{left} tilt(s) not done"
                raise FaketInputError(
                    f"{name}/{array} in {store} is {why}: finish the run first (rerun the same spec)"
                )
        problems = verify_group(g, decode=False, arrays=tuple(needed))
        if problems:
            raise FaketInputError(f"{problems[0]} in {store}: run `faket store verify {store} --repair`")


def export_store(
    store: str | os.PathLike,
    out_dir: str | os.PathLike,
    only: Iterable[str] | None = None,
    *,
    fmt: str = "mrc",
    overwrite: bool = False,
) -> list[Path]:
    """Export the tomograms of a store (or ``only`` these) in ``fmt``; returns the files written.

    Everything is checked first; the folder is then written under a temporary name and
    replaces ``out_dir`` whole (an existing, non-empty ``out_dir`` needs ``overwrite``).
    """
    from ._paths import atomic_dir, check_output_dir

    formats = _formats()
    if fmt not in formats:
        raise FaketInputError(f"unknown export format {fmt!r}: use one of {', '.join(formats)}")
    store = Path(store)
    root = open_store(store, mode="r")
    names = _select(root, store, only)
    check_output_dir(out_dir, inputs={"store": store}, overwrite=overwrite)
    check_ready(root, store, names, formats[fmt].needs)
    with atomic_dir(out_dir) as tmp:
        ex = Export(store, root, names, tmp, Path(out_dir))
        formats[fmt].write(ex)
    final = Path(out_dir)
    return sorted({final / p.relative_to(tmp) for p in ex.written})
