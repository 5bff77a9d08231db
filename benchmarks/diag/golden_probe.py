"""Where does the pinned CPU arithmetic of one host part from another's? (#10 diagnosis)

usage: python benchmarks/diag/golden_probe.py OUT.npz [nomkldnn]
Saves, for golden case 1 (1 iteration, step 0.15), the VGG features of the content
image, the first gradient and the output, with this process's kernels.
"""

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parents[2] / "tests"
sys.path.insert(0, str(HERE))
if "nomkldnn" in sys.argv:
    torch.backends.mkldnn.enabled = False

from weights_recipe import test_state_dict  # noqa: E402

from faket._scaling import stack_range, to_unit  # noqa: E402
from faket.io import read_mrc  # noqa: E402
from faket.nst import StyleTransfer, stylize_stack  # noqa: E402
from faket.reproducible import compute_record  # noqa: E402
from faket.settings import NSTSettings  # noqa: E402

c, s, i = (read_mrc(HERE / "data" / f"{k}.mrc") for k in ("content", "style", "init"))
st = NSTSettings(iterations=1, initial_iterations=1, step_size=0.15, precision="float32")
t = StyleTransfer(test_state_dict(), st, device="cpu")
x = t._as_batch(to_unit(c[:1], *stack_range(c)))
out: dict[str, np.ndarray] = {}
with torch.no_grad():
    for k, v in t.net(x, (1, 6, 8, 11, 20, 29)).items():
        out[f"feat{k}"] = v.numpy()
    m = torch.from_numpy(out["feat1"]).flatten(-2)
    out["gram1"] = (m @ m.transpose(-2, -1) / m.shape[-1]).numpy()
init = t._as_batch(to_unit(i[:1], *stack_range(i))).clone().requires_grad_()
targets = t.style_targets([to_unit(s[:1], *stack_range(s))], (64, 64))[64]
with torch.no_grad():
    ct = {8: t.net(x, (8,))[8]}
g, loss = t._gradient(init, ct, targets)
out["grad"], out["loss"] = g.numpy(), loss.numpy()
out["result"] = stylize_stack(c, [s], i, t)
out["golden"] = read_mrc(HERE / "data" / "expected_iter1_step0.15.mrc")
np.savez(sys.argv[1], **out)
rec = compute_record("cpu", "float32")
print("probe", sys.argv[2:] or ["pin"], rec["cpu_capability"], rec.get("cpu_threads"), torch.__version__,
      "result vs golden max", float(np.abs(out["result"] - out["golden"]).max()))
