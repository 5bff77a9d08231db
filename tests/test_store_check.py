"""The store verifies what it trusts (#14): missing and damaged tilts are found, named, and redone."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from conftest import call_main
from faket.errors import FaketInputError
from faket.export import export_store
from faket.store import create_stack, create_volume, done_mask, open_store, write_tilt, write_volume
from faket.store_check import clear_problems, read_tilts, verify_store


def _store(path):
    root = open_store(path, mode="w")
    g = root.require_group("tomo_000")
    g.attrs.update({"angles": [-30.0, 0.0, 30.0, 60.0], "voxel_size": 5.0})
    create_stack(g, "faket", (4, 40, 24))
    for i in range(4):
        write_tilt(g, "faket", i, np.full((40, 24), i, np.float32) + np.arange(24, dtype=np.float32))
    create_volume(g, "reconstruction", (8, 40, 24))
    write_volume(g, "reconstruction", np.ones((8, 40, 24), np.float32))
    return root


def _shard(store, i):
    return store / "tomo_000" / "faket" / "c" / str(i) / "0" / "0"


def _damage(store):
    os.remove(_shard(store, 1))                                        # deleted
    data = _shard(store, 2).read_bytes()
    _shard(store, 2).write_bytes(data[: len(data) // 2])              # truncated
    flipped = bytearray(_shard(store, 3).read_bytes())
    flipped[40] ^= 0xFF                                                # one byte changed
    _shard(store, 3).write_bytes(bytes(flipped))


def test_missing_truncated_and_altered_tilts_are_found_and_cleared(tmp_path):
    root = _store(tmp_path / "run.zarr")
    assert verify_store(root) == []
    _damage(tmp_path / "run.zarr")
    problems = verify_store(root)
    assert [(p.array, p.index) for p in problems] == [("faket", 1), ("faket", 2), ("faket", 3)]
    assert "missing" in problems[0].why and "corrupt" in problems[1].why and "corrupt" in problems[2].why
    assert str(problems[0]).startswith("tomo_000/faket tilt 1: missing")
    g = root["tomo_000"]
    assert done_mask(g, "reconstruction").all()
    clear_problems(root, problems)
    assert done_mask(g, "faket").tolist() == [True, False, False, False]
    assert not done_mask(g, "reconstruction").any()                   # made from the damaged tilts
    assert verify_store(root) == []                                   # nothing done is damaged now


def test_a_missing_volume_chunk_is_found(tmp_path):
    root = _store(tmp_path / "run.zarr")
    shutil.rmtree(tmp_path / "run.zarr" / "tomo_000" / "reconstruction" / "c")
    (p,) = verify_store(root)
    assert (p.array, p.index) == ("reconstruction", None) and "missing" in p.why


def test_reading_a_damaged_tilt_is_one_line_naming_it(tmp_path):
    root = _store(tmp_path / "run.zarr")
    _damage(tmp_path / "run.zarr")
    with pytest.raises(FaketInputError, match=r"tomo_000/faket tilt 1: missing .* store verify --repair"):
        read_tilts(root["tomo_000"], "faket")
    with pytest.raises(FaketInputError, match="tomo_000/faket tilt 1: missing"):
        export_store(tmp_path / "run.zarr", tmp_path / "out")
    assert not (tmp_path / "out").exists()                            # refused before writing


def test_store_verify_command(tmp_path, monkeypatch, capsys):
    _store(tmp_path / "run.zarr")
    code, out, err = call_main(monkeypatch, capsys, "store", "verify", tmp_path / "run.zarr")
    assert code == 0 and out == "" and "present and decodes" in err
    _damage(tmp_path / "run.zarr")
    code, out, err = call_main(monkeypatch, capsys, "store", "verify", tmp_path / "run.zarr")
    assert code == 1 and out.splitlines()[0].startswith("tomo_000/faket tilt 1: missing")
    assert len(out.splitlines()) == 3 and "--repair" in err
    # --repair needs the spec that made the store; this one was written by hand
    code, _, err = call_main(monkeypatch, capsys, "store", "verify", tmp_path / "run.zarr", "--repair")
    assert code == 2 and "cannot be recomputed" in err and len(err.strip().splitlines()) == 1


def test_export_appears_whole_and_needs_overwrite(tmp_path, monkeypatch, capsys):
    _store(tmp_path / "run.zarr")
    out = tmp_path / "out"
    files = export_store(tmp_path / "run.zarr", out)
    assert {p.name for p in files} >= {"faket.mrc", "faket.mrc.json", "angles.tlt", "angles.tlt.json"}
    assert all(p.exists() for p in files)
    (out / "mine.txt").write_text("kept")
    with pytest.raises(FaketInputError, match="not empty: give --overwrite"):
        export_store(tmp_path / "run.zarr", out)
    assert (out / "mine.txt").exists()
    export_store(tmp_path / "run.zarr", out, overwrite=True)          # replaced whole
    assert not (out / "mine.txt").exists() and (out / "tomo_000" / "faket.mrc").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no leftovers


def test_an_export_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    import faket.export as export

    _store(tmp_path / "run.zarr")
    real, calls = export.export_stack, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(export, "export_stack", failing)
    with pytest.raises(OSError, match="disk full"):
        export_store(tmp_path / "run.zarr", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.zarr"]   # no partial folder
