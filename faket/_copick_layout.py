"""copick projects and OME-Zarr NGFF 0.4 on Zarr v2 (what copick and the CryoET Data Portal read)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ._particles import class_table, labels_in_frame, particles, rotation_matrix, tomogram_frame
from .ngff import _colour, binned
from .store import volume

#: copick's user and session of the picks and segmentations faket writes.
USER, SESSION = "faket", "0"


def write_ngff_v2(path: Path, data: np.ndarray, voxel: float, levels: tuple[int, ...] = (1, 2, 4)) -> None:
    """A (z, y, x) multiscale image, NGFF 0.4 on Zarr v2, levels ``0, 1, 2`` mean-binned by ``levels``."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for k, f in enumerate(levels):
        level = binned(data, f).compute()  # labels (integers) are sampled, not averaged
        group.create_array(
            str(k),
            data=level,
            chunks=tuple(min(s, 256) for s in level.shape),
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        transforms = [{"type": "scale", "scale": [voxel * f] * 3}]
        if f > 1:
            transforms.append({"type": "translation", "translation": [voxel * (f - 1) / 2] * 3})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    axes = [{"name": n, "type": "space", "unit": "angstrom"} for n in "zyx"]
    multiscale = {"version": "0.4", "name": path.stem, "axes": axes, "datasets": datasets}
    group.attrs["multiscales"] = [multiscale]  # type: ignore[list-item]


def _name(text: str) -> str:
    """A copick object name: letters, digits and hyphens (copick splits file names at '_')."""
    return "".join(c if c.isalnum() else "-" for c in text)


def _objects(ex) -> list[dict]:
    """copick's pickable objects: the particle classes (radius from their labelled volume) and
    the other label values of the label maps (not particles)."""
    counts: dict[int, list[float]] = {}
    names: dict[int, str] = {}
    for name in ex.names:
        g = ex.root[name]
        items = particles(g)
        names.update(class_table(items))
        labels = np.asarray(volume(g, "labels")[:]) if "labels" in g else None
        voxel = float(g.attrs.get("voxel_size", 1.0))
        for cid in class_table(items):
            n = sum(p.class_id == cid for p in items)
            size = float((labels == cid).sum()) / n if labels is not None else 1.0
            counts.setdefault(cid, []).append((3 * size / (4 * math.pi)) ** (1 / 3) * voxel)
        if labels is not None:
            for v in np.unique(labels).astype(int):
                if v:  # 0 is background
                    names.setdefault(int(v), f"label-{int(v)}")
    return [
        {
            "name": _name(names[k]),
            "is_particle": k in counts,
            "label": k,
            "color": _colour(k),
            "radius": float(np.mean(counts[k])) if k in counts else 10.0,
        }
        for k in sorted(names)
    ]


def write_copick(ex) -> None:
    """A copick project: ``copick_config.json``, and per tomogram (a run) the tomogram under
    ``VoxelSpacing<v>/faket.zarr``, picks in Angstrom with 4x4 transforms, and the label map as
    a multilabel segmentation. Provenance: ``<file>.json`` beside the config, tomograms and
    segmentations; the picks' is the config's (copick reads every ``.json`` under ``Picks/``)."""
    objects = _objects(ex)
    config = {
        "config_type": "filesystem",
        "name": "faket",
        "description": "simulated by faket",
        "version": "1.0.0",
        "pickable_objects": objects,
        "overlay_root": f"local://{ex.target.resolve()}",
        "overlay_fs_args": {"auto_mkdir": True},
    }
    out = ex.folder / "copick_config.json"
    out.write_text(json.dumps(config, indent=1) + "\n")
    ex.add(out, {"array": "copick config", "tomograms": ex.names})
    for name in ex.names:
        g = ex.root[name]
        frame = tomogram_frame(g)
        run = ex.folder / "ExperimentRuns" / name
        spacing = run / f"VoxelSpacing{frame.voxel:.3f}"
        write_ngff_v2(spacing / "faket.zarr", np.asarray(volume(g, "reconstruction")[:]), frame.voxel)
        ex.add(spacing / "faket.zarr", {"tomogram": name, "array": "reconstruction"})
        items = particles(g)
        for cid, cname in class_table(items).items():
            points = []
            for p in (q for q in items if q.class_id == cid):
                z, y, x = frame.from_volume(np.array(p.zyx)) * frame.voxel
                t = np.eye(4)
                t[:3, :3] = rotation_matrix(p.axis)
                points.append(
                    {
                        "location": {"x": x, "y": y, "z": z},
                        "transformation_": t.tolist(),
                        "instance_id": 0,
                        "score": 1.0,
                    }
                )
            picks = {
                "pickable_object_name": _name(cname),
                "user_id": USER,
                "session_id": SESSION,
                "run_name": name,
                "voxel_spacing": None,
                "unit": "angstrom",
                "points": points,
                "trust_orientation": True,
            }
            path = run / "Picks" / f"{USER}_{SESSION}_{_name(cname)}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(picks) + "\n")
            ex.written.append(path)
        if "labels" in g:
            target = labels_in_frame(np.asarray(volume(g, "labels")[:]), frame).astype(np.uint8)
            seg = run / "Segmentations" / f"{frame.voxel:.3f}_{USER}_{SESSION}_classes-multilabel.zarr"
            write_ngff_v2(seg, target, frame.voxel, levels=(1,))
            ex.add(seg, {"tomogram": name, "array": "labels"})
