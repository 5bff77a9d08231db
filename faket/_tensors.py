"""Arrays to tensors, shared by the stages."""

from __future__ import annotations

import numpy as np
import torch


def as_tensor(a: np.ndarray | torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """A float32 tensor on ``device`` from a numpy array (or tensor), no copy when possible.

    A read-only array (a memory-mapped input file) is copied: torch cannot share it.
    """
    if torch.is_tensor(a):
        return a.to(device=device, dtype=torch.float32)
    arr = np.ascontiguousarray(a, dtype=np.float32)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).to(device=device)
