"""Typed run specs: every bad value refused before any work, the JSON schema, `faket spec check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKET, HAS_CUDA
from faket_cluster.demo import write_inputs



@pytest.fixture(scope="module")
def good(tmp_path_factory, weights_file) -> Path:
    out = tmp_path_factory.mktemp("spec")
    spec = write_inputs(out, tomograms=1, size=32, angles=(-30.0, 30.0, 15.0))
    spec.write_text(spec.read_text().replace('vgg = "imagenet"', f'vgg = "{weights_file}"'))
    (out / "inputs" / "same.tlt").write_text("7.5\n" * 5)          # a degenerate tilt scheme
    return spec


def _faket(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FAKET, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


BAD = [  # (name, text replaced, replacement, what the line must say)
    ("actors not a number", "batch = 1", 'batch = 1\nactors = "two"', "resources.actors = 'two': must be a valid integer"),
    ("actors zero", "batch = 1", "batch = 1\nactors = 0", "resources.actors = 0: must be greater than or equal to 1"),
    ("unknown filter", 'filter = "ramp"', 'filter = "rampp"', "reconstruction.filter = 'rampp': must be 'ramp'"),
    ("reversed z range", "z_range = [0.25, 0.75]", "z_range = [0.75, 0.25]", "z range must satisfy 0 <= lo < hi <= 1"),
    ("binning as text", 'filter = "ramp"', 'filter = "ramp"\nbinning = "2"', "reconstruction.binning = '2'"),
    ("fractional share_style", "batch = 1", "batch = 1\nshare_style = 2.5", "resources.share_style = 2.5"),
    ("negative thickness", 'filter = "ramp"', 'filter = "ramp"\nthickness = -5', "reconstruction.thickness = -5"),
    ("unknown device", "batch = 1", 'batch = 1\ndevice = "gpu"', "resources.device = 'gpu': must be 'auto', 'cpu' or 'cuda'"),
    ("zero step size", "[reconstruction]", "[nst]\nstep_size = 0\n\n[reconstruction]", "nst.step_size = 0: must be greater than 0"),
    ("unknown pooling", "[reconstruction]", '[nst]\npooling = "median"\n\n[reconstruction]', "nst.pooling = 'median'"),
    ("seed as text", "seed = 1", 'seed = "1"', "tomogram.seed = '1': must be a valid integer"),
    ("negative backoff", "batch = 1", "batch = 1\nretry_backoff = -1", "resources.retry_backoff = -1"),
    ("unknown key", "batch = 1", "batch = 1\nactor = 2", "unknown key 'actor' in [resources]"),
    ("missing file", "inputs/angles.tlt", "inputs/nope.tlt", "does not exist"),
    ("degenerate angles", "inputs/angles.tlt", "inputs/same.tlt", "all 5 tilts are at 7.5 degrees"),
]


@pytest.mark.parametrize("name,old,new,says", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_values_are_one_line_exit_2_and_no_store(good, tmp_path, name, old, new, says):
    text = good.read_text()
    assert old in text
    spec = good.parent / f"bad_{tmp_path.name}.toml"
    spec.write_text(text.replace(old, new, 1).replace('store = "run.zarr"', f'store = "{tmp_path / "run.zarr"}"'))
    for command in (("spec", "check", spec), ("run", spec)):
        res = _faket(*command)
        assert res.returncode == 2, (command, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and "Traceback" not in res.stderr, res.stderr
        assert not (tmp_path / "run.zarr").exists()


@pytest.mark.skipif(HAS_CUDA, reason="checks a GPU asked of a machine without one")
def test_gpus_asked_of_a_machine_without_them(good, tmp_path):
    spec = good.parent / "gpu.toml"
    spec.write_text(good.read_text().replace("batch = 1", "batch = 1\ngpus_per_actor = 1"))
    res = _faket("spec", "check", spec)
    assert res.returncode == 2 and "resources.gpus_per_actor = 1.0 but this machine has no CUDA GPU" in res.stderr


def test_check_accepts_a_good_spec(good):
    res = _faket("spec", "check", good)
    assert res.returncode == 0, res.stderr
    assert "1 tomogram(s), 5 tilts" in res.stdout and not (good.parent / "run.zarr").exists()


def test_schema_describes_specs(good, tmp_path):
    import jsonschema

    out = tmp_path / "schema.json"
    assert _faket("spec", "schema", "-o", out).returncode == 0
    schema = json.loads(out.read_text())
    assert set(schema["properties"]) >= {"run", "resources", "nst", "reconstruction", "tomogram"}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    jsonschema.validate(tomllib.loads(good.read_text()), schema)          # a good spec passes
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"run": {"store": "x"}, "resources": {"actors": "two"}}, schema)
    nst = schema["$defs"]["NSTSettings"]["properties"]
    assert nst["step_size"]["default"] == 0.15 and nst["style_layers"]["default"] == [1, 6, 11, 20, 29]


def test_unknown_restart_stage_is_one_line_and_exit_2(good, tmp_path):
    res = _faket("run", good, "--restart-stage", "stylise")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--restart-stage 'stylise' is not a stage" in lines[0]
    assert "prepare, stylize, reconstruct" in lines[0] and not (good.parent / "run.zarr").exists()
