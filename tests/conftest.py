"""Shared test setup: pinned CPU kernels, offline weights, isolated caches, golden data,
CLI runners, and the devices tests run on.

The golden fixtures were made with AVX2 CPU kernels and 2 intra-op threads, and the
NST's first Adam step (about +-step_size, the sign of the gradient) turns another
kernel's or another summation order's round-off into pixel differences of
2 * step_size. So the whole suite runs with the CPU kernels pinned to AVX2 and 2
threads (faket.reproducible.CPU_PIN), set here before torch is imported:
in-process tests, every CLI subprocess and every Ray worker inherit it.
``test_reproducible.py`` checks the host's own unpinned kernels in subprocesses.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

# = faket.reproducible.CPU_PIN: AVX2 kernels and 2 intra-op threads (the fixtures' count:
# the thread count splits sums, and 1, 4, 8 or 16 threads move golden pixels by up to 1.5e-3)
CPU_PIN = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "2"}
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
if X86_64:
    assert "torch" not in sys.modules, "torch was imported before the CPU kernels could be pinned"
    os.environ.update(CPU_PIN)
os.environ.pop("FAKET_REPRODUCIBLE", None)     # tests that want the switch set it themselves
# Ray starts its worker processes (tasks and actors) at niceness 15 (its worker_niceness), under
# the processes that start it. Beside another pytest worker's torch on two threads, a test's
# Ray tasks then got almost no CPU: beside three busy loops on this 2-core VM, a 32^2 engine
# run's prepare stage took 101-104 s at niceness 15 and 6-7 s at 0 (docs/performance.md,
# benchmarks/diag/worker_niceness.py). The tests' Rays run their workers at the niceness
# of the rest of the suite (every local Ray and `ray start` the tests begin inherits this).
os.environ["RAY_worker_niceness"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(Path(__file__).parent))

from weights_recipe import test_state_dict  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No downloads, no user caches: weights resolve only from files the tests make."""
    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "xdg"))
    monkeypatch.setenv("FAKET_NO_DOWNLOAD", "1")
    monkeypatch.delenv("FAKET_VGG19_WEIGHTS", raising=False)
    monkeypatch.delenv("FAKET_VGG19_URL", raising=False)


@pytest.fixture(scope="session")
def test_weights() -> dict[str, torch.Tensor]:
    """The golden fixtures' deterministic VGG-19 weights (state dict)."""
    return test_state_dict()


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory, test_weights) -> Path:
    """The golden weights saved as a torchvision-layout .pth file."""
    path = tmp_path_factory.mktemp("weights") / "vgg19_test.pth"
    torch.save(test_weights, path)
    return path


@pytest.fixture(scope="session")
def golden() -> dict[str, Path]:
    return {p.stem: p for p in DATA.iterdir()}


@pytest.fixture
def stacks(tmp_path, golden) -> Path:
    """A folder ``in/`` with copies of the golden content, style, init MRCs and angles.tlt."""
    import shutil

    d = tmp_path / "in"
    d.mkdir()
    for k in ("content", "style", "init"):
        shutil.copy(golden[k], d / f"{k}.mrc")
    shutil.copy(golden["tilt_angles"], d / "angles.tlt")
    return d


def run_faket(*args: str, env: dict | None = None, cwd: Path | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `faket` console entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "faket.cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


def console_script(name: str) -> str:
    """The installed console script ``name`` of this interpreter's environment.

    Next to ``sys.executable`` in a virtual environment; in the scripts directory
    pip used for a system interpreter (e.g. /usr/local/bin beside /usr/bin/python3).
    """
    import sysconfig

    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (folder / name).exists():
            return str(folder / name)
    raise FileNotFoundError(f"console script {name!r} is not installed for {sys.executable}")


FAKET = console_script("faket")


def call_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run faket.cli.main in-process with argv; returns (exit code, stdout, stderr)."""
    import signal

    from faket.cli import main

    monkeypatch.setattr(sys, "argv", ["faket", *map(str, args)])
    code = 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:  # main() installs its Ctrl-C / SIGTERM handlers: give pytest its own back
        for s, h in handlers.items():
            signal.signal(s, h)
    out, err = capsys.readouterr()
    return code, out, err


HAS_CUDA = torch.cuda.is_available()
#: Parametrise a test that holds on any device: ``@pytest.mark.parametrize("device", DEVICES)``.
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[
               pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")])]


_CANARY: list[bool] = []


def fixture_arithmetic() -> bool:
    """Whether this host's pinned CPU convolution rounds as the golden fixtures' did.

    Measured, not assumed: the digest of one convolution layer's output
    (``tests/golden_deviation.py --canary``) against data/conv_canary.json. On an
    H200 host's Intel Xeon it differs (oneDNN blocks its AVX2 loops by the CPU's
    cache sizes) and the pinned golden cases deviate by up to 1.8e-3 and 9.5e-3.
    """
    if not _CANARY:
        from golden_deviation import conv_canary

        _CANARY.append(X86_64 and conv_canary() == json.loads((DATA / "conv_canary.json").read_text())["sha256"])
    return _CANARY[0]


def assert_golden(out, expected, step: float, iterations: int) -> None:
    """The golden check: 1e-4 where the host has the fixtures' arithmetic; elsewhere the method's
    bounds (a flipped first-step sign moves a pixel by <= 2 * step_size per iteration; mean 1e-3)."""
    import numpy as np

    d = np.abs(np.asarray(out, np.float64) - expected)
    if d.max() <= 1e-4:
        return
    assert not fixture_arithmetic(), f"max abs {d.max():.3g} > 1e-4 with the fixtures' own kernel arithmetic"
    assert d.max() <= 2 * step * iterations and d.mean() <= 1e-3, (d.max(), d.mean())


def pytest_report_header(config) -> str:
    from faket.reproducible import cpu_capability

    gpu = torch.cuda.get_device_name(0) if HAS_CUDA else "none"
    golden = ("the fixtures' (golden checks at 1e-4)" if fixture_arithmetic() else
              "NOT the fixtures' (this CPU's oneDNN rounds its first convolution differently): "
              "golden checks fall back to the method's bounds")
    return (f"faket tests: CPU kernels {cpu_capability()} (pinned: {X86_64}), CUDA GPU: {gpu}\n"
            f"pinned CPU arithmetic: {golden}")


def pytest_runtest_logreport(report) -> None:
    """With FAKET_TEST_FAILLOG=FILE, each failure's traceback is appended to FILE at once:
    a run cut short by a time limit (a lent GPU machine) still says why tests failed."""
    path = os.environ.get("FAKET_TEST_FAILLOG")
    if path and report.failed:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"==== {report.nodeid} ({report.when})\n{report.longreprtext[-4000:]}\n")


# --------------------------------------------------------------------------- the Ray engine's tests
@pytest.fixture
def ray_env(monkeypatch):
    """A local Ray of the test's own: no token auth, no usage statistics, no cluster address."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="module")
def engine_spec(tmp_path_factory, weights_file):
    """A run spec of two 32^2 tomograms of 7 tilts (engine_support.ANGLES) for two CPU actors."""
    from engine_support import ANGLES
    from faket_cluster.demo import write_inputs

    out = tmp_path_factory.mktemp("run")
    spec = write_inputs(out, tomograms=2, size=32, angles=ANGLES)
    text = spec.read_text().replace('vgg = "imagenet"', f'vgg = "{weights_file}"')
    # CPU actors: these tests compare with CPU references, also on a machine with a GPU
    spec.write_text(text.replace("batch = 1", 'batch = 1\nactors = 2\ndevice = "cpu"'))
    return spec


@pytest.fixture
def local_ray():
    """Ends the Ray this process started, if it did, after the test."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
