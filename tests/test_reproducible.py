"""The reproducible switch, the host's own CPU kernels, and the compute record.

The suite itself runs with AVX2 kernels pinned (conftest). Here, fresh
subprocesses run with other kernel environments:

- the host's own, unpinned kernels (AVX-512 where the CPU has it);
- oneDNN limited to SSE4.1 (``ONEDNN_MAX_CPU_ISA=SSE41``): another kernel level
  that every x86-64 CPU can run, with 3 intra-op threads, so a machine without
  AVX-512 can still check that the switch overrides a foreign kernel choice and
  thread count. Measured here it deviates
  from the golden fixtures as AVX-512 was reported to (max abs 0.0026 and 0.025).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CPU_PIN, DEVICES, HAS_CUDA, X86_64, assert_golden, fixture_arithmetic, run_faket
from faket.errors import FaketInputError
from faket.io import read_mrc
from faket.reproducible import (CPU_PIN as LIBRARY_PIN, ENV_VAR, compute_record, pin_from_environment,
                                requested, switch_environment)

HERE = Path(__file__).parent
FOREIGN = {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "3"}
x86_only = pytest.mark.skipif(not X86_64, reason="CPU kernel levels are pinned on x86-64 only")


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without the suite's pin, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in CPU_PIN and k != ENV_VAR}
    env.update(extra)
    return env


def _deviation(env: dict[str, str], device: str = "cpu") -> dict:
    res = subprocess.run([sys.executable, str(HERE / "golden_deviation.py"), "--device", device],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _check_method_bounds(measured: dict, label: str) -> None:
    """A flipped gradient sign moves a pixel by <= 2 * step_size per Adam step."""
    means = []
    for name, case in measured["cases"].items():
        print(f"{label}: {name}: max abs {case['max_abs']:.3g}, mean abs {case['mean_abs']:.3g}, "
              f"pixels above 1e-4 {100 * case['fraction_above_1e-4']:.3f}% "
              f"(kernels {measured['compute']['cpu_capability']}, host {measured['compute']['host_isa']})")
        assert case["max_abs"] <= case["bound_max_abs"], (name, case)
        means.append(case["mean_abs"])
    assert np.mean(means) <= 1e-3, means


def test_the_suite_runs_on_pinned_kernels():
    assert LIBRARY_PIN == CPU_PIN
    if X86_64:
        assert compute_record()["cpu_capability"] == "AVX2"
        assert {k: os.environ[k] for k in CPU_PIN} == CPU_PIN


@pytest.mark.parametrize("value,expected", [(None, False), ("", False), ("0", False), ("false", False),
                                            ("FALSE", False), ("1", True), ("true", True), ("True", True)])
def test_switch_values(value, expected):
    env = {} if value is None else {ENV_VAR: value}
    assert requested(env) is expected
    pinned = dict(env)
    assert pin_from_environment(pinned) is expected
    assert (pinned.get("ONEDNN_MAX_CPU_ISA") == "AVX2") is (expected and X86_64)


@pytest.mark.parametrize("value", ["yes", "2", "on", "avx2"])
def test_bad_switch_value_is_refused_by_the_library(value):
    with pytest.raises(FaketInputError, match=f"{ENV_VAR}.*0, 1, true, false|{ENV_VAR}.*1, true, 0, false"):
        requested({ENV_VAR: value})
    env = {ENV_VAR: value}
    assert pin_from_environment(env) is False and "ONEDNN_MAX_CPU_ISA" not in env


@pytest.mark.parametrize("command", [["-m", "faket.cli", "info"], ["-m", "faket_cluster", "run", "x.toml"]])
def test_bad_switch_value_is_one_line_and_exit_2(command, tmp_path):
    res = subprocess.run([sys.executable, *command], env=_env(**{ENV_VAR: "yes"}), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and ENV_VAR in lines[0] and "'yes'" in lines[0], res.stderr
    assert "0" in lines[0] and "true" in lines[0] and "Traceback" not in res.stderr


@x86_only
def test_switch_environment_pins_avx2_and_cublas():
    env = switch_environment()
    assert env[ENV_VAR] == "1" and env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert {k: env[k] for k in CPU_PIN} == CPU_PIN


@pytest.mark.parametrize("device", DEVICES)
def test_host_kernels_stay_within_the_methods_bounds(device):
    """The host's own unpinned kernels (AVX-512 where the CPU has it; cuDNN on a GPU)."""
    measured = _deviation(_env(), device)
    assert measured["compute"]["cpu_pin"] == {} and measured["compute"]["device"] == device
    _check_method_bounds(measured, f"host kernels, {device}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")
def test_cuda_with_the_switch_repeats_itself_exactly():
    """On CUDA the switch means strict float32 and deterministic algorithms: two runs agree."""
    env = _env(**{ENV_VAR: "1"})
    first, second = _deviation(env, "cuda"), _deviation(env, "cuda")
    assert first["compute"]["reproducible"] and first["cases"] == second["cases"]
    _check_method_bounds(first, "cuda, reproducible")


@x86_only
def test_another_kernel_level_deviates_within_bounds_and_the_switch_restores_golden():
    foreign = _deviation(_env(**FOREIGN))
    assert foreign["compute"]["cpu_capability"] == "DEFAULT"
    _check_method_bounds(foreign, "oneDNN SSE4.1, ATen default")
    # this level really is another arithmetic: the test below could fail
    assert max(c["max_abs"] for c in foreign["cases"].values()) > 1e-4
    pinned = _deviation(_env(**FOREIGN, **{ENV_VAR: "1"}))
    assert pinned["compute"]["cpu_capability"] == "AVX2" and pinned["compute"]["reproducible"]
    assert pinned["compute"]["cpu_pin"] == CPU_PIN and pinned["compute"]["cpu_threads"] == 2
    if fixture_arithmetic():  # elsewhere the pin gives this CPU's AVX2 arithmetic: bounds only
        assert max(c["max_abs"] for c in pinned["cases"].values()) <= 1e-4
    else:
        _check_method_bounds(pinned, "pinned, a CPU whose AVX2 convolution rounds otherwise")


@x86_only
@pytest.mark.parametrize("how", ["environment", "option"])
def test_stylize_reproduces_golden_with_the_switch_alone(tmp_path, golden, weights_file, how):
    """With a foreign kernel environment, the switch alone brings the golden output back."""
    out = tmp_path / "out.mrc"
    env = _env(**FOREIGN, **({ENV_VAR: "1"} if how == "environment" else {}))
    args = ["stylize", golden["content"], golden["style"], "--init", golden["init"], "-o", out,
            "--vgg-weights", weights_file, "--iterations", 3, "--step-size", 0.05, "--device", "cpu"]
    res = subprocess.run([sys.executable, "-m", "faket.cli", *map(str, args),
                          *(["--reproducible"] if how == "option" else [])],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert_golden(read_mrc(out), read_mrc(golden["expected_iter3_step0.05"]), 0.05, 3)
    compute = json.loads((tmp_path / "out.mrc.json").read_text())["compute"]
    assert compute["reproducible"] is True and compute["cpu_capability"] == "AVX2"
    assert compute["cpu_pin"] == CPU_PIN and compute["precision"] == "float32"


def test_reproducible_refuses_a_faster_precision(tmp_path, golden, weights_file):
    res = run_faket("stylize", golden["content"], golden["style"], "--init", golden["init"],
                    "-o", tmp_path / "o.mrc", "--vgg-weights", weights_file, "--device", "cpu",
                    "--precision", "bf16", "--reproducible")
    assert res.returncode == 2 and "precision 'bf16' cannot be reproducible" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.mrc").exists()


def test_provenance_and_info_record_the_arithmetic(tmp_path, golden, weights_file):
    out = tmp_path / "out.mrc"
    res = run_faket("stylize", golden["content"], golden["style"], "--init", golden["init"], "-o", out,
                    "--vgg-weights", weights_file, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    compute = json.loads((tmp_path / "out.mrc.json").read_text())["compute"]
    import torch

    assert compute["torch"] == torch.__version__ and compute["cuda"] == torch.version.cuda
    assert compute["device"] == "cpu" and compute["device_name"] and compute["precision"] == "float32"
    assert compute["reproducible"] is False and compute["cpu_capability"] in ("AVX2", "DEFAULT", "AVX512")
    info = run_faket("info")
    assert info.returncode == 0
    assert f"kernels {compute['cpu_capability']}" in info.stdout and ENV_VAR in info.stdout
    assert "cuda build:" in info.stdout


@pytest.mark.parametrize("switch,device,asked,expected", [
    ("0", "cpu", "auto", "float32"), ("0", "cuda", "auto", "tf32"), ("1", "cuda", "auto", "float32"),
    ("0", "cuda", "bf16", "bf16"), ("0", "cpu", "float32", "float32"), ("1", "cpu", "float32", "float32")])
def test_auto_precision_is_the_published_arithmetic(monkeypatch, switch, device, asked, expected):
    """auto = TF32 cuDNN convolutions on CUDA (PyTorch's default, the published code's),
    float32 on the CPU and under the switch; the flags follow (torch sets them without a GPU)."""
    import torch

    from faket.reproducible import configure_device, resolve_precision

    monkeypatch.setenv(ENV_VAR, switch)
    assert resolve_precision(asked, device) == expected
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    try:
        assert configure_device(device, asked) == expected
        if device == "cuda":
            assert torch.backends.cudnn.allow_tf32 == (expected == "tf32")
            # the Gram matmuls follow: TF32 in tf32 and bf16, float32 in float32
            assert torch.backends.cuda.matmul.allow_tf32 == (expected in ("tf32", "bf16"))
        assert compute_record(device, asked)["precision"] == expected
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags[:2]
        torch.use_deterministic_algorithms(flags[2])
        torch.backends.cudnn.deterministic = flags[3]
    if switch == "1":
        with pytest.raises(FaketInputError, match="cannot be reproducible"):
            resolve_precision("tf32", device)


def test_golden_check_is_exact_on_the_fixtures_arithmetic_and_bounded_elsewhere(golden, monkeypatch):
    """assert_golden: 1e-4 where the canary says the arithmetic is the fixtures'; else the method's bounds."""
    import conftest

    expected = read_mrc(golden["expected_iter1_step0.15"])
    near = expected.copy()
    near.flat[::997] += 0.02                      # a few sign-flipped pixels: within 2 * 0.15 * 1
    far = expected + 0.5                          # beyond the method's bound everywhere
    monkeypatch.setattr(conftest, "_CANARY", [True])
    assert_golden(expected, expected, 0.15, 1)
    with pytest.raises(AssertionError, match="fixtures' own kernel arithmetic"):
        assert_golden(near, expected, 0.15, 1)
    monkeypatch.setattr(conftest, "_CANARY", [False])
    assert_golden(near, expected, 0.15, 1)
    with pytest.raises(AssertionError):
        assert_golden(far, expected, 0.15, 1)
