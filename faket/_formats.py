"""Export formats for tomography tools and particle pickers (see :mod:`faket.export`).

Coordinates: RELION gets tilt-series pixels (the volume's voxels) and Angstrom from the
tomogram centre; DeepFinder, copick and the Data Portal get the exported tomogram's frame
(the reconstruction, binned and cropped: :class:`faket._particles.Frame`), in voxels
(DeepFinder, Portal) or Angstrom (copick). Orientations map the reference's z axis onto
each particle's axis.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._particles import (
    class_table,
    euler_zxz,
    euler_zyz,
    labels_in_frame,
    particles,
    rotation_matrix,
    tomogram_frame,
)
from .store import volume


def _write(ex, path: Path, text: str, what: dict) -> Path:
    from .io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return ex.add(path, what)


def _stack(ex, g, name: str, array: str, out: Path) -> Path:
    from .export import export_stack, voxel_size

    out.parent.mkdir(parents=True, exist_ok=True)
    export_stack(g[array], out, voxel_size(g))
    return ex.add(out, {"tomogram": name, "array": array})


def _volume_mrc(ex, name: str, data: np.ndarray, voxel: float, out: Path, what: str) -> Path:
    from .io import write_mrc

    out.parent.mkdir(parents=True, exist_ok=True)
    write_mrc(out, np.asarray(data, np.float32), voxel_size=voxel, volume=True)
    return ex.add(out, {"tomogram": name, "array": what})


# --------------------------------------------------------------------------- IMOD
def _write_imod(ex) -> None:
    """Per tomogram: the FakET tilt-series, ``.tlt``, ``.rawtlt`` and a SerialEM ``.mdoc``."""
    import mdocfile
    import pandas as pd

    from .export import voxel_size

    for name in ex.names:
        g = ex.root[name]
        stack = ex.folder / name / f"{name}.mrc"
        _stack(ex, g, name, "faket", stack)
        angles = [float(a) for a in g.attrs["angles"]]
        for ext in ("tlt", "rawtlt"):
            ex.angles(name, ex.folder / name / f"{name}.{ext}")
        n, ny, nx = g["faket"].shape
        dose = g.attrs.get("dose_per_tilt")
        rows = {
            "ZValue": list(range(n)),
            "TiltAngle": angles,
            "PixelSpacing": [voxel_size(g)] * n,
            "ImageSize": [(nx, ny)] * n,
            "ImageFile": [stack.name] * n,
            "DataMode": [2] * n,
            "titles": [["[T = SerialEM-style tilt-series metadata written by faket (simulated data)]"]] * n,
        }
        if dose is not None:
            rows["ExposureDose"] = [float(dose)] * n
        mdoc = ex.folder / name / f"{name}.mrc.mdoc"
        mdocfile.write(pd.DataFrame(rows), mdoc)
        ex.add(mdoc, {"tomogram": name, "array": "mdoc", "dose_per_tilt": dose})


# --------------------------------------------------------------------------- RELION
def _write_relion(ex) -> None:
    """``tomograms.star`` (tilt-series, pixel size) and ``particles.star`` (RELION 4 and 5 fields)."""
    import pandas as pd
    import starfile

    from .export import voxel_size

    tomos: list[dict] = []
    rows: list[dict] = []
    for name in ex.names:
        g = ex.root[name]
        vs = voxel_size(g)
        _stack(ex, g, name, "faket", ex.folder / "tilt_series" / f"{name}.mrc")
        ex.angles(name, ex.folder / "tilt_series" / f"{name}.tlt")
        n, ny, nx = g["faket"].shape
        tomos.append(
            {
                "rlnTomoName": name,
                "rlnTomoTiltSeriesName": f"tilt_series/{name}.mrc",
                "rlnTomoTiltSeriesPixelSize": vs,
                "rlnTomoSizeX": nx,
                "rlnTomoSizeY": ny,
                "rlnTomoSizeZ": nx,
            }
        )
        centre = np.array([nx, ny, nx]) / 2.0  # RELION 5 centres coordinates on the tomogram (x, y, z)
        for p in particles(g):
            xyz = np.array(p.zyx[::-1])
            rot, tilt, psi = euler_zyz(p.axis)
            c = (xyz - centre) * vs
            rows.append(
                {
                    "rlnTomoName": name,
                    "rlnCoordinateX": xyz[0],
                    "rlnCoordinateY": xyz[1],
                    "rlnCoordinateZ": xyz[2],
                    "rlnCenteredCoordinateXAngst": c[0],
                    "rlnCenteredCoordinateYAngst": c[1],
                    "rlnCenteredCoordinateZAngst": c[2],
                    "rlnAngleRot": rot,
                    "rlnAngleTilt": tilt,
                    "rlnAnglePsi": psi,
                    "rlnClassNumber": p.class_id,
                    "rlnTomoParticleName": f"{name}/{len(rows) + 1}",
                    "rlnOpticsGroup": 1,
                }
            )
    vs0 = voxel_size(ex.root[ex.names[0]])
    optics = pd.DataFrame(
        [
            {
                "rlnOpticsGroup": 1,
                "rlnOpticsGroupName": "opticsGroup1",
                "rlnTomoTiltSeriesPixelSize": vs0,
                "rlnImagePixelSize": vs0,
            }
        ]
    )
    for file, blocks in (
        ("tomograms.star", {"global": pd.DataFrame(tomos)}),
        ("particles.star", {"optics": optics, "particles": pd.DataFrame(rows)}),
    ):
        out = ex.folder / file
        starfile.write(blocks, out)
        ex.add(out, {"array": file, "tomograms": ex.names})


# --------------------------------------------------------------------------- DeepFinder
def _write_deepfinder(ex) -> None:
    """``objl.xml`` (DeepFinder's object list) and per tomogram the tomogram and its label map."""
    import xml.etree.ElementTree as ET

    root = ET.Element("objlist")
    for idx, name in enumerate(ex.names):
        g = ex.root[name]
        frame = tomogram_frame(g)
        _volume_mrc(
            ex, name, volume(g, "reconstruction")[:], frame.voxel, ex.folder / f"{name}.mrc", "reconstruction"
        )
        target = labels_in_frame(np.asarray(volume(g, "labels")[:]), frame)
        _volume_mrc(ex, name, target, frame.voxel, ex.folder / f"{name}_target.mrc", "labels")
        for p in particles(g):
            z, y, x = frame.from_volume(np.array(p.zyx))
            phi, the, psi = euler_zxz(p.axis)
            ET.SubElement(
                root,
                "object",
                {
                    "tomo_idx": str(idx),
                    "obj_id": str(len(root)),
                    "class_label": str(p.class_id),
                    "x": f"{x:.3f}",
                    "y": f"{y:.3f}",
                    "z": f"{z:.3f}",
                    "phi": f"{phi:.3f}",
                    "psi": f"{psi:.3f}",
                    "the": f"{the:.3f}",
                },
            )
    ET.indent(root)
    _write(
        ex,
        ex.folder / "objl.xml",
        ET.tostring(root, encoding="unicode") + "\n",
        {"array": "objl", "tomograms": ex.names, "tomo_idx": dict(enumerate(ex.names))},
    )


# --------------------------------------------------------------------------- CryoET Data Portal
def _write_portal(ex) -> None:
    """The Data Portal's layout: ``<run>/Reconstructions/VoxelSpacing<v>/Tomograms/100/<run>.zarr``
    (OME-Zarr NGFF 0.4, Zarr v2) and ``.mrc``, and ``Annotations/100/<class>-1.0_orientedpoint.ndjson``
    with locations in voxels of that spacing."""
    from ._copick_layout import write_ngff_v2

    for name in ex.names:
        g = ex.root[name]
        frame = tomogram_frame(g)
        base = ex.folder / name / "Reconstructions" / f"VoxelSpacing{frame.voxel:.3f}"
        rec = np.asarray(volume(g, "reconstruction")[:])
        write_ngff_v2(base / "Tomograms" / "100" / f"{name}.zarr", rec, frame.voxel)
        ex.add(base / "Tomograms" / "100" / f"{name}.zarr", {"tomogram": name, "array": "reconstruction"})
        _volume_mrc(ex, name, rec, frame.voxel, base / "Tomograms" / "100" / f"{name}.mrc", "reconstruction")
        items = particles(g)
        for cid, cname in class_table(items).items():
            lines = []
            for p in (q for q in items if q.class_id == cid):
                z, y, x = frame.from_volume(np.array(p.zyx))
                lines.append(
                    json.dumps(
                        {
                            "type": "orientedPoint",
                            "location": {"x": x, "y": y, "z": z},
                            "xyz_rotation_matrix": rotation_matrix(p.axis).tolist(),
                        }
                    )
                )
            ann = base / "Annotations" / "100"
            _write(
                ex,
                ann / f"{cname}-1.0_orientedpoint.ndjson",
                "\n".join(lines) + "\n",
                {"tomogram": name, "array": "particles", "class": cname},
            )
            meta = {
                "annotation_object": {"name": cname, "id": f"faket:{cid}"},
                "ground_truth_status": True,
                "annotation_method": "faket simulation (phantom particle list)",
                "files": [
                    {
                        "format": "ndjson",
                        "shape": "OrientedPoint",
                        "path": f"{cname}-1.0_orientedpoint.ndjson",
                    }
                ],
                "voxel_spacing": frame.voxel,
            }
            _write(
                ex,
                ann / f"{cname}-1.0.json",
                json.dumps(meta, indent=1) + "\n",
                {"tomogram": name, "array": "annotation metadata"},
            )


def _needs_tilts(g) -> list[str]:
    return ["faket"]


def _needs_tomogram(g) -> list[str]:
    return ["reconstruction"]


def _needs_labels(g) -> list[str]:
    return ["reconstruction", "labels"]


def _formats() -> dict:
    from ._copick_layout import write_copick
    from .export import Format

    return {
        "imod": Format(_needs_tilts, _write_imod, "tilt-series MRC, .tlt, .rawtlt, .mdoc"),
        "relion": Format(_needs_tilts, _write_relion, "tomograms.star, particles.star, tilt-series"),
        "deepfinder": Format(_needs_labels, _write_deepfinder, "objl.xml, tomograms and label maps"),
        "copick": Format(_needs_tomogram, write_copick, "a copick project (copick_config.json)"),
        "portal": Format(_needs_tomogram, _write_portal, "the CryoET Data Portal's layout"),
    }
