"""`faket report`: analytic metrics, the report on a demo run and on plain files, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from conftest import call_main
from faket.demo import run_demo
from faket.io import read_mrc, write_mrc
from faket.report import (mae, mse, psnr, radial_power_spectrum, spectrum_distance, ssim)


def test_identical_images():
    a = np.random.default_rng(0).random((32, 32))
    assert mae(a, a) == 0 and mse(a, a) == 0
    assert math.isinf(psnr(a, a))
    assert ssim(a, a) == pytest.approx(1.0)


def test_known_offset_and_scaling():
    a = np.random.default_rng(1).random((32, 32))
    assert mae(a, a + 0.1) == pytest.approx(0.1)
    assert mse(a, a + 0.1) == pytest.approx(0.01)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)           # 10 log10(1 / 0.01)
    assert mae(a, 2 * a) == pytest.approx(a.mean())


def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(2)
    a = rng.random((40, 48))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    assert ssim(a, b) == pytest.approx(structural_similarity(a, b, data_range=1.0), abs=1e-9)
    assert ssim(a, 1 - a) < 0


def test_spectrum_of_a_cosine_and_of_white_noise():
    n = 64
    x = np.arange(n)
    wave = np.cos(2 * np.pi * 8 * x / n)[None, :].repeat(n, 0)   # 8 cycles across
    spec = radial_power_spectrum(wave)
    assert spec.shape == (33,) and int(np.argmax(spec)) == 8
    noise = np.random.default_rng(3).normal(size=(256, 256))
    flat = radial_power_spectrum(noise)[5:]
    assert flat.std() / flat.mean() < 0.15                   # white: flat spectrum
    assert spectrum_distance(flat, flat) == 0
    assert spectrum_distance(spec, radial_power_spectrum(noise[:64, :64])) > 0.5


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run_demo(out, size=40, angles=(-45, 45, 15), vgg_weights="random", say=lambda m: None,
             warn=lambda m: None)
    return out


def test_demo_writes_the_report(demo_run):
    report = demo_run / "report"
    data = json.loads((report / "metrics.json").read_text())
    for m in ("noisy", "baseline", "faket"):
        for k in ("mae", "mse", "psnr", "ssim", "style_distance"):
            assert isinstance(data["summary"][m][k], float), (m, k)
        assert len(data["per_tilt"][m]["ssim"]) == 7
    assert set(data["spectrum_distance_to_reference"]) == {"noiseless", "noisy", "baseline",
                                                           "faket", "reference"}
    assert data["spectrum_distance_to_reference"]["reference"] == 0
    assert data["style_distance"]["computed"] and data["style_distance"]["weights"]["kind"] == "random"
    assert data["tilt_stats"]["faket"]["std"] == pytest.approx(data["tilt_stats"]["reference"]["std"],
                                                               rel=1e-4)
    import matplotlib.image as mpimg
    for name in ("montage", "spectra", "histograms", "tilt_stats", "metrics_per_tilt",
                 "reconstruction"):
        img = mpimg.imread(report / f"{name}.png")
        assert img.shape[0] >= 300 and img.shape[1] >= 500, name
        assert img[..., :3].var() > 1e-3, name                # not blank
    html = (report / "index.html").read_text()
    assert "montage.png" in html and "<table>" in html and "faket" in html


def test_report_cli_on_plain_files(monkeypatch, capsys, demo_run, tmp_path):
    t = demo_run / "tomo"
    code, _, err = call_main(monkeypatch, capsys, "report", "--noiseless", t / "noiseless.mrc",
                             "--faket", t / "faket.mrc", "--reference",
                             demo_run / "reference" / "reference.mrc", "--angles", t / "angles.tlt",
                             "--reconstruction", t / "faket_rec.mrc", "-o", tmp_path / "r",
                             "--vgg-weights", "none", "--device", "cpu")
    assert code == 0, err
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(data["per_tilt"]) == {"faket"} and not data["style_distance"]["computed"]
    assert "reconstruction.png" in data["figures"]
    # a report folder that exists is replaced whole, only with --overwrite
    (tmp_path / "r" / "mine.txt").write_text("kept")
    again = ["report", "--noiseless", t / "noiseless.mrc", "--faket", t / "faket.mrc", "--reference",
             demo_run / "reference" / "reference.mrc", "-o", tmp_path / "r", "--vgg-weights", "none"]
    code, _, err = call_main(monkeypatch, capsys, *again)
    assert code == 2 and "give --overwrite" in err and (tmp_path / "r" / "mine.txt").exists()
    code, _, err = call_main(monkeypatch, capsys, *again, "--overwrite")
    assert code == 0 and not (tmp_path / "r" / "mine.txt").exists() and (tmp_path / "r" / "index.html").exists()
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []
    # identical stacks: MAE 0, SSIM 1, PSNR infinite written as "inf"
    code, _, err = call_main(monkeypatch, capsys, "report", "--noiseless", t / "noiseless.mrc",
                             "--faket", t / "noiseless.mrc", "--reference", t / "noisy.mrc",
                             "-o", tmp_path / "same", "--vgg-weights", "none")
    assert code == 0, err
    same = json.loads((tmp_path / "same" / "metrics.json").read_text())["summary"]["faket"]
    assert same["mae"] == 0 and same["ssim"] == pytest.approx(1) and same["psnr"] == "inf"


def test_report_bad_inputs(monkeypatch, capsys, demo_run, tmp_path):
    t = demo_run / "tomo"
    small = write_mrc(tmp_path / "small.mrc", read_mrc(t / "faket.mrc")[:, :20, :20])
    code, _, err = call_main(monkeypatch, capsys, "report", "--noiseless", t / "noiseless.mrc",
                             "--faket", small, "--reference", t / "noisy.mrc", "-o", tmp_path / "r")
    assert code == 2 and "has shape" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = call_main(monkeypatch, capsys, "report", "--noiseless", t / "noiseless.mrc",
                             "--faket", t / "faket.mrc", "-o", tmp_path / "r2")
    assert code == 2 and "missing modality reference" in err
    code, _, err = call_main(monkeypatch, capsys, "report", tmp_path / "nothing")
    assert code == 2 and "not a folder" in err


def test_json_never_holds_nan():
    from faket._json import dumps

    text = dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": np.float32("nan")}, "e": 2})
    data = json.loads(text)                                   # strict JSON: no NaN / Infinity tokens
    assert "NaN" not in text and "Infinity" not in text
    assert data["a"] is None and data["b"] == [1.0, None] and data["c"]["d"] is None and data["e"] == 2
    assert set(data["null_reasons"]) == {"a", "b[1]", "c.d"}
