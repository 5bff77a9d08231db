"""Deviation of faket's NST from the golden fixtures with this process's CPU kernels.

Run as a script in a fresh process, so that the kernel environment it was started
with is the one measured (the test suite pins AVX2 for itself):

    python tests/golden_deviation.py [--device cpu|cuda]   -> one JSON object on stdout

For each golden case: max abs, mean abs, the fraction of pixels above 1e-4, and
the method's bound ``2 * step_size * iterations`` (a flipped gradient sign moves a
pixel by at most 2 * step_size per Adam step).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

GOLDEN_CASES = [("expected_iter1_step0.15", 1, 0.15), ("expected_iter3_step0.05", 3, 0.05)]


def measure(device: str = "cpu") -> dict:
    from weights_recipe import test_state_dict

    from faket.io import read_mrc
    from faket.nst import StyleTransfer, stylize_stack
    from faket.reproducible import compute_record
    from faket.settings import NSTSettings

    c, s, i = (read_mrc(HERE / "data" / f"{k}.mrc") for k in ("content", "style", "init"))
    weights = test_state_dict()
    cases = {}
    for name, iterations, step in GOLDEN_CASES:
        # float32 arithmetic on every device: TF32 (the CUDA default) is another precision
        # mode, whose deviation `make bench-gpu` measures.
        st = NSTSettings(iterations=iterations, initial_iterations=iterations, step_size=step, precision="float32")
        out = stylize_stack(c, [s], i, StyleTransfer(weights, st, device=device))
        d = np.abs(out.astype(np.float64) - read_mrc(HERE / "data" / f"{name}.mrc"))
        cases[name] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                       "fraction_above_1e-4": float((d > 1e-4).mean()), "pixels": int(d.size),
                       "bound_max_abs": 2 * step * iterations}
    return {"compute": compute_record(device, "float32"), "cases": cases}


def conv_canary() -> str:
    """SHA-256 of the first layer's features (relu1_1) of golden content tilt 0, in this process.

    The pinned CPU arithmetic is the fixtures' only where this digest equals the one in
    data/conv_canary.json (made on the AVX2 machine that reproduces the fixtures to 5e-7).
    oneDNN sizes its AVX2 convolution's loop blocks by the CPU's caches, so a CPU with other
    caches rounds the very first convolution differently, whatever the environment pins.
    """
    import hashlib

    import torch
    from weights_recipe import test_state_dict

    from faket.io import read_mrc
    from faket.nst import StyleTransfer, stack_range, to_unit
    from faket.settings import NSTSettings

    c = read_mrc(HERE / "data" / "content.mrc")
    t = StyleTransfer(test_state_dict(), NSTSettings(precision="float32"), device="cpu")
    with torch.no_grad():
        feat = t.net(t._as_batch(to_unit(c[:1], *stack_range(c))), (1,))[1]
    return hashlib.sha256(feat.contiguous().numpy().tobytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--canary", action="store_true", help="print the convolution canary's digest")
    args = ap.parse_args()
    print(conv_canary() if args.canary else json.dumps(measure(args.device)))


if __name__ == "__main__":
    main()
