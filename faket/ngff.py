"""OME-Zarr (NGFF 0.5) metadata of a run store, and the tomograms' multiscale pyramids.

Each tomogram group of a store is an NGFF image group: its ``ome.multiscales`` lists one
multiscale per image it holds, with axes, units (angstrom) and voxel sizes. Tilt-series
are ``(tilt, y, x)`` (one level), the reconstruction is ``(z, y, x)`` with 2x and 4x binned
levels, and the labels volume is an NGFF image-label (``labels/classes``) whose properties
name the particle classes. Readers: ``ome-zarr-models`` validates it, ``ome-zarr`` and
napari (napari-ome-zarr) open it.
"""

from __future__ import annotations

import colorsys
import json
from typing import Any

import numpy as np

from .store import PYRAMID, STAGES, VOLUME_PATHS, done_mask, level_name, volume

NGFF_VERSION = "0.5"
TILT_AXES = [
    {"name": "tilt", "type": "angle"},  # the tilt index; its angles are in the group's "angles"
    {"name": "y", "type": "space", "unit": "angstrom"},
    {"name": "x", "type": "space", "unit": "angstrom"},
]
VOLUME_AXES = [{"name": n, "type": "space", "unit": "angstrom"} for n in ("z", "y", "x")]


def _dataset(path: str, scale: list[float], translation: list[float] | None = None) -> dict:
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if translation is not None and any(translation):
        transforms.append({"type": "translation", "translation": translation})
    return {"path": path, "coordinateTransformations": transforms}


def _volume_multiscale(name: str, voxel: float, paths: list[tuple[str, int]]) -> dict:
    """A (z, y, x) multiscale; level ``f`` is mean-binned by ``f``: its voxel centres move by (f-1)/2."""
    datasets = [_dataset(p, [voxel * f] * 3, [voxel * (f - 1) / 2] * 3) for p, f in paths]
    return {"name": name, "axes": VOLUME_AXES, "datasets": datasets}


def tomogram_multiscales(g) -> list[dict]:
    """The ``multiscales`` of one tomogram group: its tilt-series and its reconstruction pyramid."""
    voxel = float(g.attrs.get("voxel_size", 1.0))
    out = [
        {"name": s, "axes": TILT_AXES, "datasets": [_dataset(s, [1.0, voxel, voxel])]}
        for s in STAGES
        if s in g
    ]
    if "reconstruction" in g:
        rec_voxel = float(g["reconstruction"].attrs.get("voxel_size", voxel))
        levels = [("reconstruction", 1)] + [(level_name(f), f) for f in PYRAMID if level_name(f) in g]
        out.append(_volume_multiscale("reconstruction", rec_voxel, levels))
    return out


def _colour(k: int) -> list[int]:
    r, gr, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 0.95)
    return [int(255 * r), int(255 * gr), int(255 * b), 255]


def label_metadata(voxel: float, values: list[int], names: dict[int, str]) -> dict:
    """``ome`` attributes of the image-label group ``labels/classes`` (0 is background)."""
    shown = [v for v in values if v != 0]
    return {
        "version": NGFF_VERSION,
        "multiscales": [_volume_multiscale("classes", voxel, [("0", 1)])],
        "image-label": {
            "version": NGFF_VERSION,
            "colors": [{"label-value": v, "rgba": _colour(v)} for v in shown],
            "properties": [{"label-value": v, "class": names.get(v, f"label-{v}")} for v in shown],
            "source": {"image": "../../"},
        },
    }


def class_names(particles_csv: str | None) -> dict[int, str]:
    """Label value -> class name, from a particle list's CSV text (``class_id``, ``class_name``)."""
    import csv
    import io

    rows = csv.DictReader(io.StringIO(particles_csv or ""))
    return {int(r["class_id"]): r["class_name"] for r in rows if r.get("class_id") and r.get("class_name")}


def describe_tomogram(g, class_names: dict[int, str] | None = None) -> None:
    """Write the NGFF metadata of one tomogram group (the driver, after its data is prepared);
    a group that holds it already is not written again (a resume describes every tomogram)."""
    ome = json.loads(json.dumps({"version": NGFF_VERSION, "multiscales": tomogram_multiscales(g)}))
    if g.attrs.get("ome") != ome:
        g.attrs["ome"] = ome
    labels = g["labels"] if VOLUME_PATHS["labels"] in g else None
    if labels is not None and "ome" not in labels.attrs and done_mask(g, "labels").all():
        # once per store: the label values are read from the whole volume
        values = [int(v) for v in np.unique(np.asarray(volume(g, "labels")[:]))]
        labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": ["classes"]}
        labels["classes"].attrs["ome"] = label_metadata(
            float(g.attrs.get("voxel_size", 1.0)), values, class_names or {}
        )


def binned(data, factor: int):
    """``data`` (z, y, x) binned by ``factor`` as a dask array: block means, or for integer labels
    the first voxel of each block (a label is never averaged); the remainder is dropped."""
    import dask.array as da

    z, y, x = (max(1, s // factor) for s in data.shape)
    base = da.from_array(data)[: z * factor, : y * factor, : x * factor]
    if factor == 1:
        return base
    if np.dtype(data.dtype).kind in "iu":
        return base[::factor, ::factor, ::factor]
    return da.coarsen(np.mean, base, {0: factor, 1: factor, 2: factor}).astype(data.dtype)


def write_pyramid(g, data: np.ndarray) -> None:
    """The reconstruction's 2x and 4x mean-binned levels (dask), from level 0 ``data`` in memory."""
    for f in PYRAMID:
        g[level_name(f)][:] = binned(np.asarray(data, np.float32), f).compute()
