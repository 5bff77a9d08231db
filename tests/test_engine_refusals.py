"""The Ray engine refuses bad specs, impossible plans and changed settings before any work."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from engine_support import spec_copy  # noqa: E402
from conftest import FAKET  # noqa: E402
from faket_cluster.engine import run  # noqa: E402
from faket_cluster.spec import load_spec  # noqa: E402
from faket.errors import FaketInputError  # noqa: E402
from faket.store import done_mask, open_store  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_env")


@pytest.mark.parametrize("edit,message", [
    (('[style]', '[style]\ncolour = "blue"'), "unknown key 'colour' in [style]"),
    (('angles = "inputs/angles.tlt"', 'angles = "inputs/missing.tlt"'), "missing.tlt does not exist"),
    (('[resources]', '[resources]\ngpus_per_actor = -1'), "gpus_per_actor"),
    (('reference = "inputs/reference.mrc"\n', 'reference = "inputs/short.mrc"\n'), "has 5 tilts"),
    (('[run]', '[run]\nbogus = 1'), "unknown key 'bogus' in [run]"),
])
def test_bad_specs_fail_before_any_work(engine_spec, tmp_path, edit, message):
    from faket.io import read_mrc, write_mrc

    ref = read_mrc(engine_spec.parent / "inputs" / "reference.mrc")
    write_mrc(engine_spec.parent / "inputs" / "short.mrc", ref[:5])
    text = engine_spec.read_text().replace(*edit, 1)
    bad = engine_spec.parent / "bad.toml"
    bad.write_text(text.replace('store = "run.zarr"', f'store = "{tmp_path / "run.zarr"}"'))
    with pytest.raises(FaketInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_spec(bad)
    assert not (tmp_path / "run.zarr").exists()


def test_impossible_resources_fail_before_any_work(engine_spec, tmp_path, local_ray):
    spec = load_spec(spec_copy(engine_spec, tmp_path, **{"[resources]": "[resources]\ngpus_per_actor = 1"}))
    with pytest.raises(FaketInputError, match="GPU"):
        run(spec, say=lambda m: None)
    assert not (tmp_path / "run.zarr").exists()


def test_a_fresh_local_run_refuses_a_plan_this_machine_cannot_meet_before_any_work(engine_spec, tmp_path, local_ray):
    """A fresh store is laid out, and its first tomogram prepared, while a local Ray starts: an
    actor plan this machine cannot meet ends the run first, in one line, with no store and no Ray."""
    assert not ray.is_initialized()
    spec = load_spec(spec_copy(engine_spec, tmp_path, **{"actors = 2\n": "actors = 2\ncpus_per_actor = 4096\n"}))
    with pytest.raises(FaketInputError, match=r"cpus_per_actor = 4096\.0 but the cluster has \d+ CPUs") as err:
        run(spec, say=lambda m: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run.zarr").exists() and not ray.is_initialized()


def test_a_bad_tilt_processes_switch_ends_a_library_run_before_any_work(engine_spec, tmp_path, monkeypatch, local_ray):
    """engine.run called from Python (no command line to check the environment first): one line,
    no store, no Ray."""
    from faket._procs import PROCESSES_ENV

    monkeypatch.setenv(PROCESSES_ENV, "yes")
    spec = load_spec(spec_copy(engine_spec, tmp_path))
    with pytest.raises(FaketInputError, match=f"{PROCESSES_ENV}='yes' is not allowed") as err:
        run(spec, say=lambda m: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run.zarr").exists() and not ray.is_initialized()


def test_more_gpu_actors_than_gpus_is_refused_before_any_work(engine_spec, tmp_path, local_ray):
    """Ray would wait for ever for a third GPU: the plan says so in one line, before the store exists."""
    from faket_cluster.engine import init_ray

    init_ray(num_cpus=2, num_gpus=2)
    spec = load_spec(spec_copy(engine_spec, tmp_path, **{"actors = 2\n": ""}))
    with pytest.raises(FaketInputError, match=r"3 GPU actors .* need 3 GPUs but the cluster has 2") as err:
        run(spec, actors=3, say=lambda m: None)
    assert "\n" not in str(err.value) and "at most 2 actors" in str(err.value)
    assert not (tmp_path / "run.zarr").exists()


def test_resume_with_changed_settings_refuses_naming_the_key(engine_spec, tmp_path):
    """A store made with one step size is not resumed with another; --restart-stage redoes it."""
    from faket.pipeline import Stage
    from faket.store import write_tilt
    from faket.weights import resolve_weights
    from faket_cluster.layout import check_resume, lay_out

    spec = load_spec(spec_copy(engine_spec, tmp_path))
    identity = resolve_weights(spec.weights).identity
    root = open_store(spec.store, mode="w")
    lay_out(root, spec, identity)
    write_tilt(root["tomo_000"], "faket", 0, np.ones((32, 32), np.float32))
    recorded = dict(root["tomo_000"].attrs["settings"])
    changed = spec_copy(engine_spec, tmp_path, **{"[reconstruction]": "[nst]\nstep_size = 0.05\n\n[reconstruction]"})
    new = load_spec(changed)                               # (the next copy reuses the file name)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    res = subprocess.run([FAKET, "run", str(changed)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    [line] = lines
    assert "tomo_000" in line and "step_size 0.15 -> 0.05" in line and "--restart-stage stylize" in line
    assert dict(open_store(spec.store, mode="r")["tomo_000"].attrs["settings"]) == recorded
    # a changed execution setting (batch size) is no change of the method
    check_resume(root, load_spec(spec_copy(engine_spec, tmp_path, **{"batch = 1": "batch = 3"})), identity)
    # restarting the stage on purpose: its done flags are cleared and the new settings recorded
    lay_out(root, new, identity, restart=Stage.STYLIZE)
    assert not done_mask(root["tomo_000"], "faket").any()
    assert root["tomo_000"].attrs["settings"]["stylize"]["step_size"] == 0.05
    assert root["tomo_000"].attrs["settings"]["prepare"] == recorded["prepare"]
    check_resume(root, new, identity)
