"""Zarr run stores: layout, idempotent tilt writes, done flags, streaming export to MRC."""

from __future__ import annotations

import json

import mrcfile

import numpy as np
import pytest

from conftest import call_main
from faket.errors import FaketInputError
from faket.io import read_mrc, read_tlt
from faket.export import export_store
from faket.store import (FORMAT_VERSION, StoreSink, changed_settings, create_stack, create_volume, done_mask,
                         open_store, reset_done, tilt_chunks, write_tilt, write_tilts, write_volume)


def test_chunks_fit_detector_images():
    assert tilt_chunks(4096, 4096) == ((1, 1024, 1024), (1, 4096, 4096))
    assert tilt_chunks(4092, 5760) == ((1, 1024, 1024), (1, 4096, 6144))
    assert tilt_chunks(64, 48) == ((1, 64, 48), (1, 64, 48))


def _store(tmp_path, complete=True):
    rng = np.random.default_rng(0)
    root = open_store(tmp_path / "run.zarr", mode="w")
    g = root.require_group("tomo_000")
    g.attrs.update({"angles": [-30.0, 0.0, 30.0], "voxel_size": 7.5})
    data = rng.normal(size=(3, 40, 24)).astype(np.float32)
    create_stack(g, "faket", data.shape)
    for i in range(3 if complete else 2):
        write_tilt(g, "faket", i, data[i])
    create_volume(g, "reconstruction", (8, 40, 24))
    write_volume(g, "reconstruction", np.ones((8, 40, 24), np.float32))
    return root, data


def test_writes_are_idempotent_and_flagged(tmp_path):
    root, data = _store(tmp_path, complete=False)
    g = root["tomo_000"]
    assert done_mask(g, "faket").tolist() == [True, True, False]
    write_tilt(g, "faket", 1, data[1])                      # a retried task writes again
    assert np.array_equal(np.asarray(g["faket"][1]), data[1])
    assert g["faket"].shards == (1, 40, 24)


@pytest.mark.parametrize("threads", [0, 2])
def test_write_tilts_writes_then_flags_them_together(tmp_path, threads):
    """write_tilts: the tilts land (zarr reads them back), only their flags are set, and with an
    executor the flags wait for every tilt, also in a pool of one thread (no deadlock)."""
    from concurrent.futures import ThreadPoolExecutor

    root = open_store(tmp_path / "run.zarr", mode="w")
    g = root.require_group("t")
    data = np.random.default_rng(1).normal(size=(5, 1100, 40)).astype(np.float32)  # 2 chunk rows
    create_stack(g, "faket", data.shape)
    if threads:
        with ThreadPoolExecutor(threads) as pool:
            futures = [write_tilts(g, "faket", idx, data[idx], pool.submit) for idx in ([0, 1], [3])]
            for f in futures:
                assert f.result() is None
    else:
        assert write_tilts(g, "faket", [0, 1, 3], data[[0, 1, 3]]) is None
    assert done_mask(g, "faket").tolist() == [True, True, False, True, False]
    got = np.asarray(open_store(tmp_path / "run.zarr", mode="r")["t"]["faket"][:])
    assert np.array_equal(got[[0, 1, 3]], data[[0, 1, 3]]) and not got[[2, 4]].any()
    with ThreadPoolExecutor(1) as pool:  # the flag step queued behind its tilts
        write_tilts(g, "faket", [2, 4], data[[2, 4]], pool.submit).result(timeout=60)
    assert done_mask(g, "faket").all()


@pytest.mark.parametrize("workers", [1, 2])
def test_store_sink_range_is_the_whole_stacks(tmp_path, workers):
    """StoreSink.stack_range: the extremes of the tilts it put, and of those an earlier run put
    (read back), equal faket.nst.stack_range of the whole stack; untracked stacks have none."""
    from faket.nst import stack_range

    g = open_store(tmp_path / "run.zarr", mode="w").require_group("t")
    data = np.random.default_rng(2).normal(size=(4, 70, 50)).astype(np.float32)
    data[0, 3, 4], data[3, 9, 9] = -50.0, 60.0  # the extremes: one before, one after the stop
    create_stack(g, "noisy", data.shape)
    create_stack(g, "noiseless", data.shape)
    StoreSink(g, track=["noisy"]).put("noisy", 0, data[0])  # a run that stopped after tilt 0
    sink = StoreSink(g, track=["noisy"])
    for i in sink.todo("noisy"):
        sink.put("noisy", i, data[i])
    sink.put("noiseless", 0, data[0])
    assert sink.tracked == ["noisy"]
    assert sink.stack_range("noisy", workers) == stack_range(np.asarray(g["noisy"][:])) == (-50.0, 60.0)
    with pytest.raises(KeyError):
        sink.stack_range("noiseless")


def test_a_store_sink_opens_each_stack_once_whatever_the_tilts(tmp_path):
    """A sink opens a stack and its done flags at its first put, not at every tilt: each open
    reads the array's metadata in zarr's one event-loop thread, where threads putting tilts queue."""
    from faket.store import read_tilt

    g = open_store(tmp_path / "run.zarr", mode="w").require_group("t")
    create_stack(g, "noisy", (6, 40, 30))
    opened: list[str] = []

    class Counting:  # the group, counting what is opened through it
        def __getitem__(self, key: str):
            opened.append(key)
            return g[key]

        def __contains__(self, key: str) -> bool:
            return key in g

        def __getattr__(self, name: str):
            return getattr(g, name)

    sink = StoreSink(Counting())
    for i in range(6):
        sink.put("noisy", i, np.full((40, 30), i, np.float32))
    assert sorted(opened) == ["done_noisy", "noisy"]
    assert done_mask(g, "noisy").all()
    assert [float(read_tilt(g["noisy"], i)[7, 9]) for i in range(6)] == [0, 1, 2, 3, 4, 5]


def test_export_streams_to_mrc(tmp_path, monkeypatch, capsys):
    _, data = _store(tmp_path)
    code, _, err = call_main(monkeypatch, capsys, "export", tmp_path / "run.zarr", "-o", tmp_path / "out")
    assert code == 0, err
    out = tmp_path / "out" / "tomo_000"
    assert np.array_equal(read_mrc(out / "faket.mrc"), data)
    with mrcfile.open(out / "faket.mrc") as m:
        assert float(m.voxel_size.x) == pytest.approx(7.5)
        assert float(m.header.dmax) == pytest.approx(float(data.max()))
    np.testing.assert_allclose(read_tlt(out / "angles.tlt"), [-30, 0, 30])
    prov = json.loads((out / "faket.mrc.json").read_text())      # provenance beside every export
    assert prov["parameters"]["array"] == "faket" and prov["parameters"]["tomogram"] == "tomo_000"
    assert prov["inputs"]["store"] == str((tmp_path / "run.zarr").resolve())
    assert (out / "reconstruction.mrc.json").exists()
    assert read_mrc(out / "reconstruction.mrc").shape == (8, 40, 24)


def test_export_refuses_incomplete_and_unknown(tmp_path, monkeypatch, capsys):
    _store(tmp_path, complete=False)
    with pytest.raises(FaketInputError, match=r"1 tilt\(s\) not done"):
        export_store(tmp_path / "run.zarr", tmp_path / "out")
    code, _, err = call_main(monkeypatch, capsys, "export", tmp_path / "run.zarr", "-o",
                             tmp_path / "out", "--tomogram", "nope")
    assert code == 2 and "no tomogram 'nope'" in err
    code, _, err = call_main(monkeypatch, capsys, "export", tmp_path / "missing.zarr", "-o", tmp_path / "o")
    assert code == 2 and "does not exist" in err


def test_report_reads_a_run_store(tmp_path, monkeypatch, capsys):
    """`faket report STORE` on a store written tilt by tilt (no Ray needed to make one)."""
    import json

    rng = np.random.default_rng(5)
    root = open_store(tmp_path / "run.zarr", mode="w")
    g = root.require_group("tomo_a")
    g.attrs.update({"angles": [-40.0, -20.0, 0.0, 20.0, 40.0], "voxel_size": 10.0})
    clean = rng.normal(size=(5, 48, 48)).astype(np.float32)
    for stage, arr in (("noiseless", clean), ("noisy", clean + rng.normal(size=clean.shape)),
                       ("faket", clean + 0.5 * rng.normal(size=clean.shape)),
                       ("style", rng.normal(size=clean.shape))):
        create_stack(g, stage, clean.shape)
        for i in range(5):
            write_tilt(g, stage, i, arr[i])
    code, _, err = call_main(monkeypatch, capsys, "report", tmp_path / "run.zarr", "--vgg-weights", "none")
    assert code == 0, err
    data = json.loads((tmp_path / "run_report" / "metrics.json").read_text())
    assert data["angles"] == [-40.0, -20.0, 0.0, 20.0, 40.0]
    assert data["summary"]["faket"]["ssim"] > data["summary"]["noisy"]["ssim"]
    code, _, err = call_main(monkeypatch, capsys, "report", tmp_path / "run.zarr", "--tomogram", "x",
                             "--vgg-weights", "none")
    assert code == 2 and "no tomogram 'x'" in err


def test_concurrent_writers_never_race(tmp_path):
    """8 writers into a store the driver laid out: 30 trials, no error, every tilt written once."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1)
    data = rng.normal(size=(16, 24, 20)).astype(np.float32)
    for trial in range(30):
        root = open_store(tmp_path / f"run{trial}.zarr", mode="w")
        g = root.require_group("t")
        for stage in ("noisy", "faket"):
            create_stack(g, stage, data.shape)
        with ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(write_tilt, g, stage, i, data[i] + (stage == "faket"))
                    for i in range(16) for stage in ("noisy", "faket")]
            errors = [j.exception() for j in jobs if j.exception() is not None]
        assert errors == [], (trial, errors[:1])
        again = open_store(tmp_path / f"run{trial}.zarr", mode="r")["t"]
        assert done_mask(again, "faket").all() and done_mask(again, "noisy").all()
        assert np.array_equal(np.asarray(again["faket"][:]), data + 1)
        assert np.array_equal(np.asarray(again["noisy"][:]), data)


def test_workers_create_nothing_and_shapes_are_refused(tmp_path):
    root = open_store(tmp_path / "run.zarr", mode="w")
    g = root.require_group("t")
    with pytest.raises(FaketInputError, match="no done flags for faket"):
        write_tilt(g, "faket", 0, np.zeros((4, 4), np.float32))
    create_stack(g, "faket", (2, 4, 4))
    with pytest.raises(FaketInputError, match="expected"):
        create_stack(g, "faket", (3, 4, 4))
    create_volume(g, "labels", (2, 4, 4))
    with pytest.raises(FaketInputError, match="expected"):
        create_volume(g, "labels", (2, 4, 5))             # refused like stacks, never overwritten
    assert not done_mask(g, "labels").any()
    write_volume(g, "labels", np.ones((2, 4, 4), np.float32))
    assert done_mask(g, "labels").all()
    reset_done(g, "labels")
    assert not done_mask(g, "labels").any()


def test_format_version_is_checked(tmp_path):
    root = open_store(tmp_path / "run.zarr", mode="w")
    assert root.attrs["version"] == FORMAT_VERSION
    root.attrs["version"] = FORMAT_VERSION - 1
    for mode in ("r", "a"):
        with pytest.raises(FaketInputError, match=f"format version {FORMAT_VERSION - 1}, this faket reads"):
            open_store(tmp_path / "run.zarr", mode=mode)
    root.attrs["version"] = FORMAT_VERSION + 1
    with pytest.raises(FaketInputError, match=f"version {FORMAT_VERSION + 1}"):
        open_store(tmp_path / "run.zarr", mode="r")


def test_changed_settings_names_the_keys():
    assert changed_settings({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}) == []
    assert changed_settings({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == ["b", "c"]
