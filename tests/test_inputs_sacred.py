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
