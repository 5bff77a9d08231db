"""What the Ray engine's test modules share: the repository root, the test series' angles, a spec
copied for one test, and a tomogram's single-process result to compare the engine's with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faket.nst import StyleTransfer, stylize_stack
from faket.settings import NSTSettings
from faket.store import holder, open_store

ROOT = Path(__file__).resolve().parents[1]
#: The engine tests' tilt angles (from, to, step; degrees): 7 tilts.
ANGLES = (-45.0, 45.0, 15.0)


def spec_copy(spec: Path, tmp: Path, **replace) -> Path:
    """The spec with its store and export in ``tmp`` and each ``replace`` key's text replaced."""
    text = spec.read_text().replace('store = "run.zarr"', f'store = "{tmp / "run.zarr"}"')
    text = text.replace('export = "mrc"', f'export = "{tmp / "mrc"}"')
    for k, v in replace.items():
        text = text.replace(k, v)
    new = spec.parent / f"spec_{tmp.name}.toml"
    new.write_text(text)
    return new


def single_process_result(store: Path, name: str, weights) -> np.ndarray:
    """The single-process result, with the actors' thread count (1 CPU each): same kernels."""
    import torch

    root = open_store(store, mode="r")
    g = root[name]
    c, i = (np.asarray(g[k][:]) for k in ("content", "noisy"))
    s = np.asarray(holder(root, g, "style")["style"][:])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return stylize_stack(c, [s], i, StyleTransfer(weights, NSTSettings(), device="cpu"))
    finally:
        torch.set_num_threads(threads)
