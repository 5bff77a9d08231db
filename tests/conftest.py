"""Shared test setup: offline weights, isolated caches, golden data, CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def run_faket(*args: str, env: dict | None = None, cwd: Path | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `faket` console entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "faket.cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


def call_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run faket.cli.main in-process with argv; returns (exit code, stdout, stderr)."""
    from faket.cli import main

    monkeypatch.setattr(sys, "argv", ["faket", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
