"""MRC, .tlt and provenance I/O: round trips, validation, atomic writes."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from faket.errors import FaketInputError
from faket.io import (
    MrcWriter,
    angles_range,
    check_output_path,
    open_mrc,
    read_mrc,
    read_tlt,
    write_mrc,
    write_tlt,
)
from faket.provenance import provenance, write_provenance


def test_mrc_roundtrip_header_and_lazy_read(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4, 6, 5)).astype(np.float32)
    path = write_mrc(tmp_path / "a.mrc", data, voxel_size=3.5)
    with mrcfile.open(path) as m:
        assert m.header.ispg == 0                      # an image stack
        assert float(m.voxel_size.x) == pytest.approx(3.5)
        assert float(m.header.dmin) == pytest.approx(data.min())
        assert float(m.header.dmax) == pytest.approx(data.max())
        assert float(m.header.dmean) == pytest.approx(data.mean(), abs=1e-6)
        assert float(m.header.rms) == pytest.approx(data.std(), rel=1e-5)
    with open_mrc(path) as s:
        assert isinstance(s.data, np.memmap)
        assert np.array_equal(s.tilt(2), data[2])
        assert s.voxel_size[0] == pytest.approx(3.5)
    vol = write_mrc(tmp_path / "v.mrc", data, volume=True)
    with mrcfile.open(vol) as m:
        assert m.header.ispg == 1


def test_writer_failure_keeps_existing_file(tmp_path):
    target = tmp_path / "out.mrc"
    old = np.ones((2, 3, 3), np.float32)
    write_mrc(target, old)
    with pytest.raises(RuntimeError):
        with MrcWriter(target, (2, 3, 3)) as w:
            w.write(0, np.zeros((3, 3)))
            raise RuntimeError("crash mid-way")
    assert np.array_equal(read_mrc(target), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mrc"]
    with pytest.raises(RuntimeError, match="never written"):
        with MrcWriter(target, (2, 3, 3)) as w:
            w.write(0, np.zeros((3, 3)))
    assert np.array_equal(read_mrc(target), old)


@pytest.mark.parametrize("where", ["set_image_stack", "close"])
def test_an_interrupt_while_the_writer_opens_or_discards_leaves_no_file(tmp_path, monkeypatch, where):
    """Ctrl-C or SIGTERM (a KeyboardInterrupt) as the temporary file is made, before the with
    block is entered, or while a failed write closes it: neither it nor the target is left."""
    from mrcfile.mrcmemmap import MrcMemmap

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    target = tmp_path / "out.mrc"
    if where == "close":   # the write fails, then its clean-up is interrupted
        monkeypatch.setattr(MrcMemmap, "close", interrupted)
        with pytest.raises(KeyboardInterrupt):
            with MrcWriter(target, (2, 3, 3)) as w:
                w.write(0, np.zeros((3, 3)))
                raise RuntimeError("crash mid-way")
    else:
        monkeypatch.setattr(MrcMemmap, where, interrupted)
        with pytest.raises(KeyboardInterrupt):
            MrcWriter(target, (2, 3, 3))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b"hello"), "not a readable MRC"),
    (lambda p: p.write_bytes(b"\0" * 2000), "not a readable MRC"),
])
def test_open_mrc_refuses_bad_files(tmp_path, make, match):
    p = tmp_path / "x.mrc"
    make(p)
    with pytest.raises(FaketInputError, match=match):
        open_mrc(p, role="content")


def test_open_mrc_truncated_2d_and_nan(tmp_path):
    good = write_mrc(tmp_path / "g.mrc", np.ones((3, 8, 8), np.float32))
    trunc = tmp_path / "t.mrc"
    trunc.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(FaketInputError, match="t.mrc"):
        open_mrc(trunc)
    flat = tmp_path / "flat.mrc"
    with mrcfile.new(flat) as m:
        m.set_data(np.ones((8, 8), np.float32))
    with pytest.raises(FaketInputError, match="2D"):
        open_mrc(flat, role="style")
    nan = np.ones((3, 8, 8), np.float32)
    nan[1, 2, 2] = np.nan
    write_mrc(tmp_path / "n.mrc", nan)
    with pytest.raises(FaketInputError, match="NaN or Inf values in tilt/slice 1"):
        open_mrc(tmp_path / "n.mrc")
    inf = np.ones((3, 8, 8), np.float32)
    inf[2, 0, 0] = -np.inf
    write_mrc(tmp_path / "i.mrc", inf)
    with pytest.raises(FaketInputError, match="NaN or Inf values in tilt/slice 2"):
        open_mrc(tmp_path / "i.mrc")
    both = np.ones((6, 8, 8), np.float32)
    both[4, 1, 1], both[3, 0, 0] = np.nan, np.inf
    write_mrc(tmp_path / "b.mrc", both)
    for workers in (1, 3):  # scanned on threads, the first bad tilt is still the one named
        with pytest.raises(FaketInputError, match="NaN or Inf values in tilt/slice 3:"):
            open_mrc(tmp_path / "b.mrc", workers=workers)


def test_finite_check_keeps_the_stack_range(tmp_path):
    """The one pass that refuses NaN/Inf also gives the range the NST normalises with."""
    from faket.nst import stack_range

    data = np.random.default_rng(0).normal(size=(5, 16, 16)).astype(np.float32)
    with open_mrc(write_mrc(tmp_path / "r.mrc", data)) as s:
        assert s.value_range == stack_range(data)
    with open_mrc(tmp_path / "r.mrc", workers=3) as s:  # the tilts scanned on threads: the same
        assert s.value_range == stack_range(data)
    with open_mrc(tmp_path / "r.mrc", check_finite=False) as s:
        assert s.value_range is None


def test_tlt_roundtrip_and_errors(tmp_path):
    a = angles_range(-60, 60, 3)
    assert len(a) == 41 and a[0] == -60 and a[-1] == 60
    p = write_tlt(tmp_path / "a.tlt", a)
    np.testing.assert_allclose(read_tlt(p, expected=41), a)
    (tmp_path / "b.tlt").write_text("1.0\nabc\n")
    with pytest.raises(FaketInputError, match="line 2 is not a number"):
        read_tlt(tmp_path / "b.tlt")
    with pytest.raises(FaketInputError, match="41 angles but the tilt-series has 40"):
        read_tlt(p, expected=40)
    (tmp_path / "e.tlt").write_text("\n")
    with pytest.raises(FaketInputError, match="no angles"):
        read_tlt(tmp_path / "e.tlt")


def test_output_path_checks(tmp_path):
    assert check_output_path(tmp_path / "new" / "x.mrc") == tmp_path / "new" / "x.mrc"
    assert not (tmp_path / "new").exists()                  # a check writes nothing
    with pytest.raises(FaketInputError, match="directory"):
        check_output_path(tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FaketInputError, match="cannot be created"):
        check_output_path(tmp_path / "afile" / "x.mrc")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os
        if os.access(ro, os.W_OK):                       # running as root: permissions ignored
            pytest.skip("permissions are not enforced for this user")
        with pytest.raises(FaketInputError, match="not writable"):
            check_output_path(ro / "x.mrc")
    finally:
        ro.chmod(0o700)


def test_provenance_sidecar(tmp_path):
    out = tmp_path / "x.mrc"
    rec = provenance({"a": 1}, inputs={"content": tmp_path / "c.mrc"}, seeds={"noise": 3},
                     weights={"kind": "random", "seed": 0})
    path = write_provenance(out, rec)
    assert path.name == "x.mrc.json"
    d = json.loads(path.read_text())
    assert d["parameters"] == {"a": 1} and d["seeds"] == {"noise": 3}
    assert d["faket_version"] and d["torch"] and d["weights"]["kind"] == "random"


def test_tlt_keeps_full_precision(tmp_path):
    angles = np.array([-60.123456789012, 0.1 + 0.2, 1 / 3, 59.99999999])
    np.testing.assert_array_equal(read_tlt(write_tlt(tmp_path / "a.tlt", angles)), angles)
