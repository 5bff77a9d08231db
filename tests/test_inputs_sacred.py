"""Inputs are sacred (#14): no command writes over one of its inputs, whatever the path spelling."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from conftest import call_main
from faket.io import write_mrc


@pytest.fixture
def files(stacks):
    write_mrc(stacks / "volume.mrc", np.random.default_rng(0).random((16, 64, 64), dtype=np.float32),
              volume=True)
    return stacks


CASES = {
    "stylize -o content": lambda d: ["stylize", d / "content.mrc", d / "style.mrc", "--init", d / "init.mrc",
                                     "-o", d / "content.mrc", "--vgg-weights", "random", "--device", "cpu"],
    "stylize -o init, spelled another way": lambda d: [
        "stylize", d / "content.mrc", d / "style.mrc", "--init", d / "init.mrc",
        "-o", d / ".." / "in" / "init.mrc", "--vgg-weights", "random", "--device", "cpu"],
    "stylize -o a hard link to style": lambda d: [
        "stylize", d / "content.mrc", d / "style.mrc", "-o", d / "style_link.mrc",
        "--vgg-weights", "random", "--device", "cpu"],
    "project -o volume": lambda d: ["project", d / "volume.mrc", "--angles", d / "angles.tlt",
                                    "-o", d / "volume.mrc"],
    "reconstruct -o tilts": lambda d: ["reconstruct", d / "content.mrc", "--angles", d / "angles.tlt",
                                       "-o", d / "content.mrc"],
    "noise estimate -o reference": lambda d: ["noise", "estimate", "-r", d / "style.mrc",
                                              "-n", d / "content.mrc", "-o", d / "style.mrc"],
    "noise apply over its noiseless": lambda d: ["noise", "apply", d / "noisy.mrc", "--reference",
                                                 d / "style.mrc", "--snr", 0.1, "-o", d,
                                                 "--modalities", "noisy"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_command_writes_over_its_input(case, files, monkeypatch, capsys):
    if "hard link" in case:
        os.link(files / "style.mrc", files / "style_link.mrc")
    if "noise apply" in case:
        shutil.copy(files / "content.mrc", files / "noisy.mrc")
    before = {p.name: p.read_bytes() for p in files.iterdir()}
    code, _, err = call_main(monkeypatch, capsys, *CASES[case](files))
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("WARNING")]
    assert code == 2 and len(lines) == 1 and "never writes over its inputs" in lines[0], err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in files.iterdir()} == before    # byte-identical, nothing new


OUTPUT_CASES = {
    "project": lambda d, o: ["project", d / "volume.mrc", "--angles", d / "angles.tlt", "-o", o / "out.mrc",
                             "--device", "cpu"],
    "reconstruct": lambda d, o: ["reconstruct", d / "content.mrc", "--angles", d / "angles.tlt",
                                 "-o", o / "out.mrc", "--device", "cpu"],
    "noise estimate": lambda d, o: ["noise", "estimate", "-r", d / "style.mrc", "-n", d / "content.mrc",
                                    "-o", o / "out.mrc"],
    "noise apply": lambda d, o: ["noise", "apply", d / "content.mrc", "--reference", d / "style.mrc",
                                 "--snr", 0.1, "-o", o, "--modalities", "noisy"],
    "stylize": lambda d, o: ["stylize", d / "content.mrc", d / "style.mrc", "--init", d / "init.mrc",
                             "-o", o / "out.mrc", "--vgg-weights", "random", "--device", "cpu"],
    "phantom": lambda d, o: ["phantom", o, "--size", 16, "--n-particles", 2, "--angles", "-30,30,30"],
}
#: The existing file each command would replace.
EXISTING = {"noise apply": "noisy.mrc", "phantom": "volume.mrc"}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_an_existing_output_is_replaced_only_with_overwrite(case, files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    target = out / EXISTING.get(case, "out.mrc")
    target.write_bytes(b"precious")
    code, _, err = call_main(monkeypatch, capsys, *OUTPUT_CASES[case](files, out))
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("WARNING")]
    assert code == 2 and len(lines) == 1 and "exists: give --overwrite" in lines[0], err
    assert target.read_bytes() == b"precious" and sorted(p.name for p in out.iterdir()) == [target.name]
    code, _, err = call_main(monkeypatch, capsys, *OUTPUT_CASES[case](files, out), "--overwrite")
    assert code == 0, err
    assert target.read_bytes() != b"precious"
