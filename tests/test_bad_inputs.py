"""Bad input anywhere in the CLI (#14): one line, exit 2, no traceback, inputs untouched, nothing written.

Each case runs the real ``faket`` entry point (``faket.cli.main``, in-process for speed) on a
folder of valid inputs, with one thing wrong. The folder's bytes are compared before and
after, so a case that writes anything (a partial output, a temporary file) or changes an
input fails. The engine's commands (``faket run``, ``faket spec``) are among them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import HAS_CUDA, call_main
from faket.io import write_mrc, write_tlt


@pytest.fixture
def d(stacks, weights_file):
    """Valid inputs of every command: stacks, a volume, labels, a noise model, a store, a spec."""
    rng = np.random.default_rng(0)
    write_mrc(stacks / "volume.mrc", rng.random((16, 32, 32), dtype=np.float32), voxel_size=4.0, volume=True)
    import mrcfile

    mrcfile.new(stacks / "flat.mrc", rng.random((32, 32), dtype=np.float32)).close()
    write_tlt(stacks / "same.tlt", np.zeros(5))
    write_tlt(stacks / "three.tlt", np.array([-30.0, 0.0, 30.0]))
    (stacks / "words.tlt").write_text("minus sixty\nzero\n")
    (stacks / "text.mrc").write_text("not an MRC file\n")
    (stacks / "model.json").write_text("{ not json")
    (stacks / "vgg.pth").symlink_to(weights_file)          # 80 MB: linked, not copied and hashed
    (stacks / "bad.pth").write_bytes(b"\x80\x04not a state dict")
    (stacks / "out").mkdir()
    (stacks / "out" / "keep.txt").write_text("an earlier result\n")
    _store(stacks / "run.zarr")
    (stacks / "plain.zarr").mkdir()
    (stacks / "spec.toml").write_text(SPEC)
    (stacks / "broken.toml").write_text("[run\nstore = ")
    return stacks


SPEC = """
[run]
store = "run2.zarr"
[noise]
pairs = [{reference = "style.mrc", noiseless = "content.mrc"}]
[style]
reference = "style.mrc"
[[tomogram]]
name = "t"
tilts = "content.mrc"
angles = "angles.tlt"
"""


def _store(path):
    from faket.store import create_stack, open_store, write_tilt

    g = open_store(path, mode="w").create_group("tomo_000")
    create_stack(g, "faket", (5, 16, 16))
    for i in range(4):                                    # tilt 4 is not done
        write_tilt(g, "faket", i, np.full((16, 16), i, np.float32))
    g.attrs.update({"angles": [-60.0, -30.0, 0.0, 30.0, 60.0], "voxel_size": 4.0})


def _stylize(*extra):
    return lambda d: ["stylize", d / "content.mrc", d / "style.mrc", "--init", d / "init.mrc",
                      "-o", d / "new.mrc", "--vgg-weights", d / "vgg.pth", "--device", "cpu", *extra]


def _reconstruct(*extra, tilts="content.mrc", angles="angles.tlt"):
    return lambda d: ["reconstruct", d / tilts, "--angles", d / angles, "-o", d / "rec.mrc",
                      "--device", "cpu", *extra]


def _project(*extra, volume="volume.mrc", angles="angles.tlt"):
    return lambda d: ["project", d / volume, "--angles", d / angles, "-o", d / "proj.mrc",
                      "--device", "cpu", *extra]


def _apply(*extra):
    return lambda d: ["noise", "apply", d / "content.mrc", "-o", d / "noise_out", *extra]


def _estimate(*extra, ref="style.mrc", clean="content.mrc"):
    return lambda d: ["noise", "estimate", "-r", d / ref, "-n", d / clean, "-o", d / "model_new.json",
                      *extra]


def _phantom(*extra):
    return lambda d: ["phantom", d / "ph", *extra]


def _report(*extra):
    return lambda d: ["report", "--noiseless", d / "content.mrc", "--faket", d / "init.mrc",
                      "--reference", d / "style.mrc", "--angles", d / "angles.tlt", "-o", d / "rep",
                      "--vgg-weights", d / "vgg.pth", "--device", "cpu", *extra]


def _run(*extra, spec="spec.toml"):
    return lambda d: ["run", d / spec, *extra]


#: case -> (argv maker, a fragment of the one line expected)
CASES = {
    # phantom
    "phantom --size 0": (_phantom("--size", 0), "--size"),
    "phantom --size -5": (_phantom("--size", -5), "--size"),
    "phantom --size abc": (_phantom("--size", "abc"), "--size"),
    "phantom --pixel-size -1": (_phantom("--pixel-size", -1), "--pixel-size"),
    "phantom --pixel-size 0": (_phantom("--pixel-size", 0), "--pixel-size"),
    "phantom --n-particles -1": (_phantom("--n-particles", -1), "--n-particles"),
    "phantom --angles a,b": (_phantom("--angles", "a,b"), "--angles"),
    "phantom --angles step 0": (_phantom("--angles", "-60,60,0"), "--angles"),
    "phantom --angles stop < start": (_phantom("--angles", "60,-60,3"), "--angles"),
    "phantom --defocus nan": (_phantom("--defocus", "nan"), "--defocus"),
    "phantom --defocus inf": (_phantom("--defocus", "inf"), "--defocus"),
    "phantom --dose -1": (_phantom("--dose", -1), "--dose"),
    # project
    "project: missing volume": (_project(volume="none.mrc"), "none.mrc does not exist"),
    "project: volume not MRC": (_project(volume="text.mrc"), "text.mrc"),
    "project: 2D volume": (_project(volume="flat.mrc"), "flat.mrc"),
    "project: angles missing": (_project(angles="none.tlt"), "none.tlt"),
    "project: identical angles": (_project(angles="same.tlt"), "same.tlt"),
    "project: angles not numbers": (_project(angles="words.tlt"), "words.tlt"),
    "project --dose -1": (_project("--dose", -1), "--dose"),
    "project --dose nan": (_project("--dose", "nan"), "--dose"),
    "project --detector-width 0": (_project("--detector-width", 0), "--detector-width"),
    "project --detector-width -3": (_project("--detector-width", -3), "--detector-width"),
    "project --device bogus": (_project("--device", "bogus"), "bogus"),
    "project --bogus-option": (_project("--bogus-option"), "--bogus-option"),
    # reconstruct
    "reconstruct --binning 0": (_reconstruct("--binning", 0), "--binning"),
    "reconstruct --binning 1000": (_reconstruct("--binning", 1000), "binning 1000"),
    "reconstruct --thickness 0": (_reconstruct("--thickness", 0), "--thickness"),
    "reconstruct --thickness -5": (_reconstruct("--thickness", -5), "--thickness"),
    "reconstruct --filter bogus": (_reconstruct("--filter", "bogus"), "bogus"),
    "reconstruct --binning-method bogus": (_reconstruct("--binning-method", "bogus"), "bogus"),
    "reconstruct --z-range 10,5": (_reconstruct("--z-range", "10,5"), "z"),
    "reconstruct --z-range a,b": (_reconstruct("--z-range", "a,b"), "--z-range"),
    "reconstruct: angle count": (_reconstruct(angles="three.tlt"), "three.tlt"),
    "reconstruct: identical angles": (_reconstruct(angles="same.tlt"), "same.tlt"),
    "reconstruct: tilts not MRC": (_reconstruct(tilts="text.mrc"), "text.mrc"),
    # noise estimate
    "noise estimate --order -2": (_estimate("--order", -2), "--order"),
    "noise estimate: shapes differ": (_estimate(clean="volume.mrc"), "shape"),
    "noise estimate: reference missing": (_estimate(ref="none.mrc"), "none.mrc"),
    # noise apply
    "noise apply --r 2": (_apply("--reference", "{d}/style.mrc", "--r", 2, "--sigma", 1), "--r"),
    "noise apply --r 0": (_apply("--reference", "{d}/style.mrc", "--r", 0, "--sigma", 1), "--r"),
    "noise apply --sigma -1": (_apply("--reference", "{d}/style.mrc", "--r", 0.5, "--sigma", -1), "--sigma"),
    "noise apply --snr -1": (_apply("--reference", "{d}/style.mrc", "--snr", -1), "--snr"),
    "noise apply --snr 0": (_apply("--reference", "{d}/style.mrc", "--snr", 0), "--snr"),
    "noise apply --content-sigma -1": (_apply("--model", "{d}/model_ok.json", "--content-sigma", -1),
                                       "--content-sigma"),
    "noise apply: model missing": (_apply("--model", "{d}/none.json"), "none.json"),
    "noise apply: model not JSON": (_apply("--model", "{d}/model.json"), "model.json"),
    "noise apply: neither model nor reference": (_apply(), "--model"),
    "noise apply --modalities bogus": (_apply("--model", "{d}/model_ok.json", "--modalities", "bogus"),
                                       "bogus"),
    "noise apply --order 9": (_apply("--model", "{d}/model_ok.json", "--order", 9), "--order"),
    # stylize
    "stylize --iterations 0": (_stylize("--iterations", 0), "--iterations"),
    "stylize --step-size 0": (_stylize("--step-size", 0), "--step-size"),
    "stylize --step-size nan": (_stylize("--step-size", "nan"), "--step-size"),
    "stylize --avg-decay 1.5": (_stylize("--avg-decay", 1.5), "--avg-decay"),
    "stylize --pooling bogus": (_stylize("--pooling", "bogus"), "bogus"),
    "stylize --content-layers 99": (_stylize("--content-layers", "99"), "layer"),
    "stylize --style-layers a": (_stylize("--style-layers", "a"), "--style-layers"),
    "stylize --style-layer-weights count": (_stylize("--style-layer-weights", "1,2"), "weights"),
    "stylize --batch-size 0": (_stylize("--batch-size", 0), "--batch-size"),
    "stylize --tile-size 8": (_stylize("--tile-size", 8), "--tile-size"),
    "stylize --memory-budget -1": (_stylize("--memory-budget", -1), "--memory-budget"),
    "stylize --memory-budget tiny": (_stylize("--memory-budget", 0.000001), "memory"),
    "stylize --precision bogus": (_stylize("--precision", "bogus"), "bogus"),
    "stylize --content-weight -1": (_stylize("--content-weight", -1), "--content-weight"),
    "stylize --tv-weight nan": (_stylize("--tv-weight", "nan"), "--tv-weight"),
    "stylize: weights missing": (lambda d: _stylize()(d)[:-4] + ["--vgg-weights", d / "none.pth",
                                                                 "--device", "cpu"], "none.pth"),
    "stylize: weights not a state dict": (lambda d: _stylize()(d)[:-4] + ["--vgg-weights", d / "bad.pth",
                                                                          "--device", "cpu"], "bad.pth"),
    "stylize: init of another shape": (lambda d: ["stylize", d / "content.mrc", d / "style.mrc", "--init",
                                                  d / "volume.mrc", "-o", d / "new.mrc"], "volume.mrc"),
    # report
    "report --style-tilts 0": (_report("--style-tilts", 0), "--style-tilts"),
    "report: run folder missing": (lambda d: ["report", d / "nowhere"], "nowhere"),
    "report: noiseless missing": (lambda d: _report()(d)[:1] + ["--noiseless", d / "none.mrc"]
                                  + _report()(d)[3:], "none.mrc"),
    # export
    "export: store missing": (lambda d: ["export", d / "none.zarr", "-o", d / "exp"], "none.zarr"),
    "export: not a faket store": (lambda d: ["export", d / "plain.zarr", "-o", d / "exp"], "plain.zarr"),
    "export: unknown tomogram": (lambda d: ["export", d / "run.zarr", "-o", d / "exp", "--tomogram", "x"],
                                 "'x'"),
    "export: a tilt not done": (lambda d: ["export", d / "run.zarr", "-o", d / "exp"], "not done"),
    "export: non-empty folder": (lambda d: ["export", d / "run.zarr", "-o", d / "out"], "--overwrite"),
    "export: into its own store": (lambda d: ["export", d / "run.zarr", "-o", d / "run.zarr" / "exp"],
                                   "overlaps the store input"),
    "store verify: not a store": (lambda d: ["store", "verify", d / "plain.zarr"], "plain.zarr"),
    # the engine
    "run: spec missing": (_run(spec="none.toml"), "none.toml"),
    "run: spec not TOML": (_run(spec="broken.toml"), "broken.toml"),
    "run --actors 0": (_run("--actors", 0), "--actors"),
    "run --actors -1": (_run("--actors", -1), "--actors"),
    "run --restart-stage bogus": (_run("--restart-stage", "bogus"), "bogus"),
    "spec check: not TOML": (lambda d: ["spec", "check", d / "broken.toml"], "broken.toml"),
    # weights, demo
    "weights check: missing": (lambda d: ["weights", "check", d / "none.pth"], "none.pth"),
    "weights check: not a state dict": (lambda d: ["weights", "check", d / "bad.pth"], "bad.pth"),
    "demo --size 0": (lambda d: ["demo", "-o", d / "demo", "--size", 0], "--size"),
    "demo --angles a": (lambda d: ["demo", "-o", d / "demo", "--angles", "a"], "--angles"),
    "no such command": (lambda d: ["simulate"], "simulate"),
}
if not HAS_CUDA:
    CASES["project --device cuda without CUDA"] = (_project("--device", "cuda"), "CUDA")
    CASES["stylize --device cuda without CUDA"] = (
        lambda d: _stylize()(d)[:-2] + ["--device", "cuda"], "CUDA")

SPEC_EDITS = {
    "spec: thickness -5": ("[reconstruction]\nthickness = -5\n", "thickness"),
    "spec: actors 0": ("[resources]\nactors = 0\n", "actors"),
    "spec: unknown key": ("[style]\ncolour = 1\n", "colour"),
    "spec: step size 0": ("[nst]\nstep_size = 0\n", "step_size"),
    "spec: noise order 9": ("[noise]\norder = 9\n", "order"),
    "spec: no tomogram": ("[[tomogram]]\nname = \"u\"\n", "u"),
    "spec: precision bogus": ("[nst]\nprecision = \"bogus\"\n", "precision"),
}


def _snapshot(root) -> dict:
    def digest(p):
        if p.is_symlink():
            return f"link to {os.readlink(p)}"
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"

    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*"))}


def _check(code: int, err: str, fragment: str, before: dict, after: dict) -> None:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("WARNING")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("faket: error: "), err
    assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    assert "Traceback" not in err
    assert after == before                                 # inputs byte-identical, nothing written


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(case, d, monkeypatch, capsys):
    from faket.io import read_mrc
    from faket.noise import NoiseModel

    NoiseModel.given(0.5, 1.0, read_mrc(d / "style.mrc")).save(d / "model_ok.json")
    make, fragment = CASES[case]
    args = [str(a).replace("{d}", str(d)) for a in make(d)]
    before = _snapshot(d.parent)
    code, _, err = call_main(monkeypatch, capsys, *args)
    _check(code, err, fragment, before, _snapshot(d.parent))


@pytest.mark.parametrize("case", list(SPEC_EDITS))
def test_bad_spec_value_is_one_line_and_exit_2(case, d, monkeypatch, capsys):
    edit, fragment = SPEC_EDITS[case]
    section = edit.split("\n", 1)[0]
    text = SPEC.replace(section, edit.rstrip()) if section in SPEC else SPEC + edit
    (d / "spec.toml").write_text(text)
    before = _snapshot(d.parent)
    code, _, err = call_main(monkeypatch, capsys, "run", d / "spec.toml")
    _check(code, err, fragment, before, _snapshot(d.parent))


def test_the_suite_is_large_enough():
    assert len(CASES) + len(SPEC_EDITS) >= 60


def test_an_internal_error_is_one_line_with_its_log(d, monkeypatch, capsys, tmp_path):
    """A bug (an exception that is not bad input) prints one line naming a log with the traceback."""
    import faket.reconstruction

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setenv("FAKET_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(faket.reconstruction, "reconstruct", broken)
    code, _, err = call_main(monkeypatch, capsys, *_reconstruct()(d))
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err
    assert lines[-1].startswith("faket: internal error (ZeroDivisionError: a bug)")
    log = Path(lines[-1].rsplit(" ", 1)[1])
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text()
    assert "ZeroDivisionError" in log.read_text()


def test_a_store_that_cannot_be_made_is_named(tmp_path):
    from faket.errors import FaketInputError
    from faket.store import open_store

    (tmp_path / "afile").write_text("")
    with pytest.raises(FaketInputError, match="store folder .* cannot be created: .* is a file"):
        open_store(tmp_path / "afile" / "run.zarr", mode="a")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_command_says_so(tmp_path, sig):
    """Ctrl-C or SIGTERM during a long command: one line, exit 130 / 143, no output left behind."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "faket.cli", "demo", "-o", str(tmp_path / "demo"),
                             "--size", "48", "--vgg-weights", "random", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "demo").exists():   # work has started
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert err.strip().splitlines()[-1] == "faket: interrupted" and "Traceback" not in err
    assert not [p for p in (tmp_path / "demo").rglob("*tmp-*")]              # no half-written file
