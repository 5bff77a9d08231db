"""The real `faket` command line: golden interface, pipeline, demo, bad input."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from conftest import HAS_CUDA, assert_golden, call_main, run_faket
from faket.io import read_mrc, write_mrc

GOLDEN = [("expected_iter1_step0.15", 1, 0.15), ("expected_iter3_step0.05", 3, 0.05)]


@pytest.mark.parametrize("name,iterations,step", GOLDEN)
def test_stylize_golden_through_the_console_script(tmp_path, golden, weights_file, name,
                                                   iterations, step):
    out = tmp_path / "out.mrc"
    res = run_faket("stylize", golden["content"], golden["style"], "--init", golden["init"],
                    "--output", out, "--vgg-weights", weights_file, "--iterations", iterations,
                    "--step-size", step, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert_golden(read_mrc(out), read_mrc(golden[name]), step, iterations)
    prov = json.loads((tmp_path / "out.mrc.json").read_text())
    assert prov["parameters"]["step_size"] == step
    assert prov["parameters"]["initial_iterations"] == iterations
    assert prov["weights"]["kind"] == "file" and len(prov["weights"]["sha256"]) == 64
    with mrcfile.open(out) as m:
        assert float(m.header.dmax) == pytest.approx(float(m.data.max()))


def test_help_shows_published_defaults(monkeypatch, capsys):
    code, out, _ = call_main(monkeypatch, capsys, "stylize", "--help")
    assert code == 0
    for text in ("0.15", "256,64,16,4,1", "1,6,11,20,29", "0.99", "max", "imagenet"):
        assert text in out, text
    code, out, _ = call_main(monkeypatch, capsys, "reconstruct", "--help")
    assert code == 0 and "approxShrec" in out and "--paper" in out
    code, out, _ = call_main(monkeypatch, capsys, "info")
    assert code == 0 and "faket 0.1.0" in out and "imagenet weights" in out


def test_pipeline_step_by_step(tmp_path, weights_file):
    ph = tmp_path / "ph"
    assert run_faket("phantom", ph, "--size", 32, "--n-particles", 6, "--angles", "-45,45,15"
                     ).returncode == 0
    for f in ("volume.mrc", "labels.mrc", "reference.mrc", "angles.tlt", "particles.csv"):
        assert (ph / f).exists(), f
    steps = [
        ("project", ph / "volume.mrc", "--angles", ph / "angles.tlt", "-o", tmp_path / "clean.mrc"),
        ("noise", "estimate", "-r", ph / "reference.mrc", "-n", tmp_path / "clean.mrc",
         "-o", tmp_path / "noise.json"),
        ("noise", "apply", tmp_path / "clean.mrc", "--model", tmp_path / "noise.json",
         "-o", tmp_path / "sim", "--seed", 3),
        ("stylize", tmp_path / "sim" / "content.mrc", ph / "reference.mrc", "--init",
         tmp_path / "sim" / "noisy.mrc", "-o", tmp_path / "faket.mrc", "--vgg-weights",
         weights_file, "--device", "cpu"),
        ("reconstruct", tmp_path / "faket.mrc", "--angles", ph / "angles.tlt",
         "-o", tmp_path / "rec.mrc", "--binning", 2),
    ]
    for args in steps:
        res = run_faket(*args)
        assert res.returncode == 0, (args[0], res.stderr)
    faket, ref = read_mrc(tmp_path / "faket.mrc"), read_mrc(ph / "reference.mrc")
    assert faket.shape == ref.shape == (7, 32, 32)
    np.testing.assert_allclose(faket.reshape(7, -1).std(1), ref.reshape(7, -1).std(1), rtol=1e-3)
    assert read_mrc(tmp_path / "rec.mrc").shape == (16, 16, 16)
    with mrcfile.open(tmp_path / "rec.mrc") as m:
        assert float(m.voxel_size.x) == pytest.approx(20.0)
    model = json.loads((tmp_path / "noise.json").read_text())
    assert model["order"] == 2 and len(model["curves"]["r"]) == 7
    assert model["provenance"]["inputs"]["reference0"].endswith("reference.mrc")
    # given r/sigma by SNR when the reference has no noiseless counterpart
    res = run_faket("noise", "apply", tmp_path / "clean.mrc", "--reference", ph / "reference.mrc",
                    "--snr", 0.1, "-o", tmp_path / "snr", "--modalities", "noisy")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "snr" / "noisy.mrc").exists() and not (tmp_path / "snr" / "content.mrc").exists()


def test_demo_runs_and_warns_without_imagenet(tmp_path):
    res = run_faket("demo", "--out-dir", tmp_path / "d", "--size", 40, "--angles", "-30,30,15",
                    "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "RANDOM weights" in res.stderr
    png = tmp_path / "d" / "preview.png"
    import matplotlib.image as mpimg
    img = mpimg.imread(png)
    assert img.shape[0] > 200 and img.shape[1] > 400 and img[..., :3].var() > 0.01
    for f in ("tomo/faket.mrc", "tomo/noisy.mrc", "tomo/baseline.mrc", "tomo/faket_rec.mrc",
              "tomo/labels.mrc", "tomo/particles.csv", "noise_model.json", "reference/reference.mrc",
              "report/index.html", "report/metrics.json", "report/montage.png"):
        assert (tmp_path / "d" / f).exists(), f
    assert read_mrc(tmp_path / "d" / "tomo" / "faket.mrc").shape == (5, 40, 40)
    prov = json.loads((tmp_path / "d" / "tomo" / "noisy.mrc.json").read_text())
    assert prov["seeds"]["noise"] == 1 and prov["weights"]["kind"] == "random"


# --------------------------------------------------------------------------- bad input
def _assert_clean_failure(code, err, out_path=None, contains=None):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("faket: error: "), err
    if contains:
        assert contains in lines[0], lines[0]
    if out_path is not None:
        assert not out_path.exists()
        assert not list(out_path.parent.glob(f".{out_path.name}.tmp-*"))


def _stylize_args(d, out, **over):
    args = {"content": d / "content.mrc", "style": d / "style.mrc", "--init": d / "init.mrc",
            "--output": out, "--vgg-weights": "random", "--device": "cpu"}
    args.update(over)
    flat = [str(args.pop("content")), str(args.pop("style"))]
    for k, v in args.items():
        flat += [k, str(v)]
    return flat


def _write_bad(d, kind):
    p = d / f"bad_{kind}.mrc"
    if kind == "text":
        p.write_text("this is not an MRC file at all" * 50)
    elif kind == "truncated":
        p.write_bytes((d / "content.mrc").read_bytes()[:-4000])
    elif kind == "2d":
        with mrcfile.new(p) as m:
            m.set_data(np.ones((64, 64), np.float32))
    elif kind == "nan":
        a = read_mrc(d / "content.mrc")
        a[2, 10, 10] = np.inf
        write_mrc(p, a)
    elif kind == "4tilts":
        write_mrc(p, read_mrc(d / "style.mrc")[:4])
    elif kind == "small":
        write_mrc(p, read_mrc(d / "init.mrc")[:, :32, :32])
    return p


@pytest.mark.parametrize("case,contains", [
    ("missing content", "does not exist"),
    ("content not mrc", "not a readable MRC"),
    ("truncated content", "not a readable MRC"),
    ("2d style", "is 2D"),
    ("nan content", "NaN or Inf"),
    ("tilt count mismatch", "has 4 tilts"),
    ("init shape mismatch", "init"),
    ("unknown layer", "unknown style layer index 40"),
    ("zero step", "--step-size = 0.0: must be greater than 0"),
    ("negative step", "--step-size = -0.1"),
    ("zero iterations", "--iterations = 0: must be greater than or equal to 1"),
    ("tiny tiles", "--tile-size"),
    ("memory below one tile", "below what one 64x64 tile"),
    ("unknown precision", "--precision = 'fp8'"),
    ("cuda without a GPU", "no CUDA GPU is visible"),
    ("weights wrong keys", "lacks"),
    ("weights wrong shapes", "shape"),
    ("output not writable", "cannot be created"),
])
def test_stylize_bad_input(monkeypatch, capsys, stacks, tmp_path, test_weights, case, contains):
    import torch

    out = tmp_path / "out" / "faket.mrc"
    d = stacks
    over = {}
    if case == "missing content":
        over["content"] = d / "nope.mrc"
    elif case == "content not mrc":
        over["content"] = _write_bad(d, "text")
    elif case == "truncated content":
        over["content"] = _write_bad(d, "truncated")
    elif case == "2d style":
        over["style"] = _write_bad(d, "2d")
    elif case == "nan content":
        over["content"] = _write_bad(d, "nan")
    elif case == "tilt count mismatch":
        over["style"] = _write_bad(d, "4tilts")
    elif case == "init shape mismatch":
        over["--init"] = _write_bad(d, "small")
    elif case == "unknown layer":
        over["--style-layers"] = "1,6,11,20,40"
    elif case == "zero step":
        over["--step-size"] = 0
    elif case == "negative step":
        over["--step-size"] = -0.1
    elif case == "zero iterations":
        over["--iterations"] = 0
    elif case == "tiny tiles":
        over["--tile-size"] = 8
    elif case == "memory below one tile":
        over["--max-memory"] = 0.01
    elif case == "unknown precision":
        over["--precision"] = "fp8"
    elif case == "cuda without a GPU":
        if HAS_CUDA:
            pytest.skip("this machine has a CUDA GPU")
        over["--device"] = "cuda"
    elif case == "weights wrong keys":
        sd = dict(test_weights)
        sd.pop("features.34.weight")
        torch.save(sd, d / "w.pth")
        over["--vgg-weights"] = d / "w.pth"
    elif case == "weights wrong shapes":
        sd = dict(test_weights)
        sd["features.0.weight"] = torch.zeros(64, 1, 3, 3)
        torch.save(sd, d / "w.pth")
        over["--vgg-weights"] = d / "w.pth"
    elif case == "output not writable":
        (tmp_path / "blocker").write_text("a file, not a folder")
        out = tmp_path / "blocker" / "faket.mrc"
    code, _, err = call_main(monkeypatch, capsys, "stylize", *_stylize_args(d, out, **over))
    _assert_clean_failure(code, err, out if case != "output not writable" else None, contains)


def test_failed_run_keeps_existing_output(monkeypatch, capsys, stacks, tmp_path):
    out = tmp_path / "faket.mrc"
    old = np.full((5, 64, 64), 7.0, np.float32)
    write_mrc(out, old)
    code, _, err = call_main(monkeypatch, capsys, "stylize",
                             *_stylize_args(stacks, out, **{"--step-size": -1}))
    assert code == 2
    assert np.array_equal(read_mrc(out), old)


@pytest.mark.parametrize("content,contains", [
    ("1.0\n2.0\n", "has 2 angles but the tilt-series has 5"),
    ("-60\n-30\nzero\n30\n60\n", "line 3 is not a number"),
])
def test_reconstruct_bad_angles(monkeypatch, capsys, stacks, tmp_path, content, contains):
    (stacks / "bad.tlt").write_text(content)
    out = tmp_path / "rec.mrc"
    code, _, err = call_main(monkeypatch, capsys, "reconstruct", stacks / "style.mrc", "--angles",
                             stacks / "bad.tlt", "-o", out)
    _assert_clean_failure(code, err, out, contains)


def test_project_bad_inputs(monkeypatch, capsys, stacks, tmp_path):
    (stacks / "bad.tlt").write_text("a\n")
    out = tmp_path / "p.mrc"
    code, _, err = call_main(monkeypatch, capsys, "project", stacks / "content.mrc", "--angles",
                             stacks / "bad.tlt", "-o", out)
    _assert_clean_failure(code, err, out, "not a number")
    code, _, err = call_main(monkeypatch, capsys, "project", _write_bad(stacks, "2d"), "--angles",
                             stacks / "angles.tlt", "-o", out)
    _assert_clean_failure(code, err, out, "is 2D")


def test_noise_bad_inputs(monkeypatch, capsys, stacks, tmp_path):
    out = tmp_path / "n.json"
    code, _, err = call_main(monkeypatch, capsys, "noise", "estimate", "-r", stacks / "init.mrc",
                             "-n", _write_bad(stacks, "4tilts"), "-o", out)
    _assert_clean_failure(code, err, out, "must match")
    code, _, err = call_main(monkeypatch, capsys, "noise", "apply", stacks / "content.mrc",
                             "-o", tmp_path / "sim")
    _assert_clean_failure(code, err, None, "--model")
    (tmp_path / "m.json").write_text("not json")
    code, _, err = call_main(monkeypatch, capsys, "noise", "apply", stacks / "content.mrc",
                             "--model", tmp_path / "m.json", "-o", tmp_path / "sim")
    _assert_clean_failure(code, err, tmp_path / "sim" / "noisy.mrc", "not a valid")


def test_weights_commands(monkeypatch, capsys, weights_file, tmp_path):
    code, out, _ = call_main(monkeypatch, capsys, "weights", "check", weights_file)
    assert code == 0 and "ok: 32 tensors" in out
    monkeypatch.setenv("FAKET_VGG19_URL", "http://127.0.0.1:9/vgg19-dcbb9e9d.pth")
    code, _, err = call_main(monkeypatch, capsys, "weights", "fetch", "--dest", tmp_path / "w.pth")
    _assert_clean_failure(code, err, tmp_path / "w.pth", "download failed")
    code, _, err = call_main(monkeypatch, capsys, "stylize", "a.mrc", "b.mrc", "-o",
                             tmp_path / "x.mrc", "--vgg-weights", "imagenet")
    assert code == 2 and "a.mrc does not exist" in err


def test_run_app_maps_errors_to_one_line_and_exit_codes(capsys):
    import typer

    from faket.cli import run_app
    from faket.errors import FaketInputError

    class Boom(RuntimeError):
        pass

    for exc, code in ((FaketInputError("bad thing"), 2), (Boom("tilt 3 failed"), 1)):
        demo_app = typer.Typer()

        def make_go(exc: Exception):          # a closure: a parameter would become a CLI option
            def go() -> None:
                raise exc
            return go

        demo_app.command()(make_go(exc))

        with pytest.raises(SystemExit) as info:
            import sys
            old = sys.argv
            sys.argv = ["prog"]
            try:
                run_app(demo_app, "prog", {Boom: 1})
            finally:
                sys.argv = old
        err = capsys.readouterr().err
        assert info.value.code == code and len(err.strip().splitlines()) == 1 and "Traceback" not in err
