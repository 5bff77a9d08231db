"""Exports for cryo-ET tools (#13): each format read back by that format's own reader.

The store is made with faket's own stages (phantom, projection, reconstruction with
binning 2 and a Z crop), written through the store API, so no Ray is needed.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from faket.export import export_store
from faket.io import open_mrc, read_mrc
from faket.ngff import class_names, describe_tomogram
from faket.phantom import make_phantom, write_particles_csv
from faket.projection import project
from faket.reconstruction import reconstruct
from faket.settings import PhantomSettings, ReconstructionSettings
from faket.store import create_stack, create_volume, open_store, write_tilt, write_volume

REC = ReconstructionSettings(binning=2, z_range=(0.25, 0.75))
PIXEL = 6.5


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats")
    ph = make_phantom(PhantomSettings(size=48, n_particles=8, seed=3, pixel_size=PIXEL))
    angles = np.arange(-45.0, 46.0, 15.0)
    tilts = project(ph.density, angles).numpy()
    root = open_store(tmp / "run.zarr", mode="w")
    g = root.require_group("tomo_000")
    create_stack(g, "faket", tilts.shape)
    for i, t in enumerate(tilts):
        write_tilt(g, "faket", i, t)
    rec = reconstruct(tilts, angles, REC).numpy()
    create_volume(g, "reconstruction", rec.shape)
    g["reconstruction"].attrs["voxel_size"] = PIXEL * REC.binning
    write_volume(g, "reconstruction", rec)
    create_volume(g, "labels", ph.labels.shape)
    write_volume(g, "labels", ph.labels.astype(np.float32))
    csv = write_particles_csv(tmp / "particles.csv", ph.particles).read_text()
    g.attrs.update({"angles": angles.tolist(), "voxel_size": PIXEL, "particles_csv": csv,
                    "settings": {"reconstruct": REC.to_dict()}, "dose_per_tilt": 2.5})
    describe_tomogram(g, class_names(csv))
    return tmp / "run.zarr", ph


def test_a_described_tomogram_is_not_written_again(store):
    """A resume describes every tomogram: one whose NGFF metadata is current keeps its file."""
    path, _ = store
    meta = path / "tomo_000" / "zarr.json"
    before = (meta.read_bytes(), meta.stat().st_mtime_ns)
    g = open_store(path)["tomo_000"]
    describe_tomogram(g, class_names(g.attrs["particles_csv"]))
    assert (meta.read_bytes(), meta.stat().st_mtime_ns) == before


def voxel_size_of(path) -> float:
    with open_mrc(path) as m:
        return float(m.voxel_size[0])


def _volume_coords(ph) -> np.ndarray:
    return np.array([[p["z"], p["y"], p["x"]] for p in ph.particles])


def test_store_is_ome_zarr(store):
    import ome_zarr_models.v05 as ngff
    import zarr

    path, ph = store
    g = zarr.open_group(str(path / "tomo_000"), mode="r")
    image = ngff.Image.from_zarr(g)                            # validates NGFF 0.5
    by_name = {m.name: m for m in image.ome_attributes.multiscales}
    assert set(by_name) == {"faket", "reconstruction"}
    rec = by_name["reconstruction"]
    assert [d.path for d in rec.datasets] == ["reconstruction", "reconstruction_2x", "reconstruction_4x"]
    assert rec.datasets[0].coordinateTransformations[0].scale == [PIXEL * 2] * 3
    assert [a.unit for a in rec.axes] == ["angstrom"] * 3
    full, half = np.asarray(g["reconstruction"][:]), np.asarray(g["reconstruction_2x"][:])
    assert np.allclose(half[0, 0, 0], full[:2, :2, :2].mean(), atol=1e-5)   # 2x mean binning
    labels = ngff.ImageLabel.from_zarr(g["labels"]["classes"])
    names = {p.label_value: p.model_extra["class"] for p in labels.ome_attributes.image_label.properties}
    assert {names[k] for k in (1, 2, 3, 4)} == {"sphere", "shell", "rod", "dumbbell"}


def test_the_ome_zarr_reader_opens_the_store(store):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path, _ = store
    nodes = list(Reader(parse_url(str(path / "tomo_000")))())
    assert nodes and nodes[0].data[0].shape[-2:] in {(48, 48), (24, 24)}


def test_imod(store, tmp_path):
    import mdocfile

    path, _ = store
    export_store(path, tmp_path / "imod", fmt="imod")
    d = tmp_path / "imod" / "tomo_000"
    df = mdocfile.read(d / "tomo_000.mrc.mdoc")
    assert np.allclose(df["TiltAngle"], np.arange(-45.0, 46.0, 15.0))
    assert np.allclose(df["PixelSpacing"], PIXEL) and np.allclose(df["ExposureDose"], 2.5)
    assert voxel_size_of(d / "tomo_000.mrc") == pytest.approx(PIXEL)
    assert [float(v) for v in (d / "tomo_000.rawtlt").read_text().split()] == list(np.arange(-45.0, 46.0, 15.0))
    assert all((d / f"{f}.json").exists() for f in ("tomo_000.mrc", "tomo_000.tlt", "tomo_000.mrc.mdoc"))


def test_relion(store, tmp_path):
    import starfile

    path, ph = store
    export_store(path, tmp_path / "relion", fmt="relion")
    star = starfile.read(tmp_path / "relion" / "particles.star")
    parts = star["particles"]
    assert len(parts) == len(ph.particles) and set(parts["rlnTomoName"]) == {"tomo_000"}
    got = parts[["rlnCoordinateZ", "rlnCoordinateY", "rlnCoordinateX"]].to_numpy()
    assert np.abs(got - _volume_coords(ph)).max() <= 0.5
    assert star["optics"]["rlnTomoTiltSeriesPixelSize"].iloc[0] == pytest.approx(PIXEL)
    assert sorted(parts["rlnClassNumber"]) == sorted(p["class_id"] for p in ph.particles)
    tomos = starfile.read(tmp_path / "relion" / "tomograms.star")
    assert tomos["rlnTomoTiltSeriesPixelSize"].iloc[0] == pytest.approx(PIXEL)
    ts = tmp_path / "relion" / tomos["rlnTomoTiltSeriesName"].iloc[0]
    assert read_mrc(ts).shape == (7, 48, 48)


def test_deepfinder(store, tmp_path):
    path, ph = store
    export_store(path, tmp_path / "df", fmt="deepfinder")
    objs = ET.parse(tmp_path / "df" / "objl.xml").getroot()
    assert len(objs) == len(ph.particles)
    target = read_mrc(tmp_path / "df" / "tomo_000_target.mrc")
    tomo = read_mrc(tmp_path / "df" / "tomo_000.mrc")
    assert target.shape == tomo.shape and voxel_size_of(tmp_path / "df" / "tomo_000.mrc") == pytest.approx(13)
    for o, p in zip(objs, ph.particles):
        z, y, x = (float(o.get(k)) for k in ("z", "y", "x"))
        want = (np.array([p["z"], p["y"], p["x"]]) - 0.5) / 2 - [6, 0, 0]   # bin 2, Z from slice 6
        assert np.abs(np.array([z, y, x]) - want).max() <= 0.5
        assert int(o.get("class_label")) == p["class_id"]
        if 0 <= round(z) < target.shape[0]:                    # the label map has the class there
            near = target[max(0, round(z) - 2):round(z) + 3, max(0, round(y) - 2):round(y) + 3,
                          max(0, round(x) - 2):round(x) + 3]
            assert (near == p["class_id"]).any(), p


def test_portal(store, tmp_path):
    import zarr

    path, ph = store
    export_store(path, tmp_path / "portal", fmt="portal")
    base = tmp_path / "portal" / "tomo_000" / "Reconstructions" / "VoxelSpacing13.000"
    z = zarr.open_group(str(base / "Tomograms" / "100" / "tomo_000.zarr"), mode="r", zarr_format=2)
    assert z.attrs["multiscales"][0]["version"] == "0.4"
    found = 0
    for f in (base / "Annotations" / "100").glob("*.ndjson"):
        cls = f.name.split("-1.0")[0]
        meta = json.loads(f.with_name(f"{cls}-1.0.json").read_text())
        assert meta["annotation_object"]["name"] == cls and meta["voxel_spacing"] == 13
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            loc = np.array([rec["location"][k] for k in "zyx"]) * 2 + 0.5 + [12, 0, 0]
            near = min(np.abs(loc - c).max() for c, p in zip(_volume_coords(ph), ph.particles)
                       if p["class_name"] == cls)
            assert near <= 1.0                                 # 0.5 voxel of the 2x-binned frame
            found += 1
    assert found == len(ph.particles)


@pytest.mark.parametrize("fmt,message", [("tiff", "unknown export format 'tiff'"),
                                         ("deepfinder", "labels")])
def test_export_refusals(store, tmp_path, fmt, message, monkeypatch, capsys):
    from conftest import call_main

    path, _ = store
    if fmt == "deepfinder":                                    # a store without labels
        import shutil

        shutil.copytree(path, tmp_path / "nolabels.zarr")
        shutil.rmtree(tmp_path / "nolabels.zarr" / "tomo_000" / "labels")
        shutil.rmtree(tmp_path / "nolabels.zarr" / "tomo_000" / "done_labels")
        path = tmp_path / "nolabels.zarr"
    code, _, err = call_main(monkeypatch, capsys, "export", path, "-o", tmp_path / "out", "--format", fmt)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


COPICK_READ = r"""
import json, sys
import numpy as np
import copick, zarr
root = copick.from_file(sys.argv[1])
out = {"objects": {o.name: [o.label, o.is_particle, o.radius] for o in root.pickable_objects}, "runs": {}}
for run in root.runs:
    vs = run.voxel_spacings[0]
    tomo = vs.tomograms[0]
    data = zarr.open(tomo.zarr(), mode="r")
    picks = {p.pickable_object_name: [[q.location.x, q.location.y, q.location.z] for q in p.points]
             for p in run.picks}
    segs = run.get_segmentations(is_multilabel=True)
    seg = zarr.open(segs[0].zarr(), mode="r")["0"][:] if segs else None
    out["runs"][run.name] = {"voxel_size": vs.voxel_size, "tomo_type": tomo.tomo_type,
                             "shape": list(data["0"].shape), "levels": len(list(data.array_keys())),
                             "picks": picks, "segmentation": None if seg is None else list(seg.shape),
                             "seg_max": None if seg is None else int(seg.max())}
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def copick_python(tmp_path_factory):
    """A virtual environment with copick (which pins zarr < 3), made once per test session."""
    import subprocess
    import sys

    env = tmp_path_factory.mktemp("copick") / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(env)], capture_output=True, text=True)
    python = env / "bin" / "python"
    if made.returncode == 0:
        # --no-compile: the install's bytecode for its ~100 packages took 33 of 108 s on 2 cores
        made = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-compile", "copick", "zarr<3"],
                              capture_output=True, text=True, timeout=900)
    if made.returncode != 0:
        reason = f"copick cannot be installed here: {made.stderr.strip().splitlines()[-1:]}"
        print(reason)
        pytest.skip(reason)
    return python


def test_copick_opens_the_project(store, tmp_path, copick_python):
    import subprocess

    path, ph = store
    export_store(path, tmp_path / "copick", fmt="copick")
    res = subprocess.run([str(copick_python), "-c", COPICK_READ, str(tmp_path / "copick" / "copick_config.json")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    run = got["runs"]["tomo_000"]
    assert run["voxel_size"] == pytest.approx(13.0) and run["tomo_type"] == "faket" and run["levels"] == 3
    assert run["shape"] == list(read_mrc_shape(path)) and run["segmentation"] == run["shape"]
    assert got["objects"]["sphere"][:2] == [1, True] and got["objects"]["label-5"][1] is False
    assert run["seg_max"] == 5
    n = 0
    for cls, points in run["picks"].items():
        want = [np.array([p["x"], p["y"], p["z"]]) for p in ph.particles if p["class_name"] == cls]
        assert len(points) == len(want)
        for q in points:                                       # Angstrom, tomogram frame -> volume voxels
            vox = (np.array(q) / 13.0)[::-1] * 2 + 0.5 + [12, 0, 0]
            assert min(np.abs(vox[::-1] - w).max() for w in want) <= 1.0   # 0.5 voxel of the binned frame
            n += 1
    assert n == len(ph.particles)


def read_mrc_shape(store_path):
    import zarr

    return zarr.open_group(str(store_path / "tomo_000"), mode="r")["reconstruction"].shape
