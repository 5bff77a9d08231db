"""Stack scaling of the NST (method section 3): the stack range, [0, 1] scaling, per-tilt stats.

Each stack is scaled by its own min and max, as the published code does; the
range is an argument so that a worker can scale one tilt of a large stack alone.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from ._tensors import as_tensor

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def stack_range(stack: np.ndarray, chunk: int = 8) -> tuple[np.float32, np.float32]:
    """Min and max of a whole stack ``(n, H, W)``, read ``chunk`` tilts at a time.

    Large stacks are read in row blocks of about 2 M pixels by several threads
    (numpy's reductions run without the GIL; a memory-mapped file is read in
    parallel too); a chunked array's (Zarr's) blocks are whole chunk rows, so
    that no chunk is decoded twice. The blocks are combined in order: the same
    result as one pass.
    """
    n = int(stack.shape[0])
    h, w = (int(d) for d in stack.shape[1:3]) if stack.ndim >= 3 else (1, 1)
    rows = max(1, min(h, (1 << 21) // max(1, w)))
    chunks = getattr(stack, "chunks", None)
    if isinstance(chunks, tuple) and len(chunks) == 3 and all(isinstance(c, int) for c in chunks):
        rows = -(-rows // int(chunks[1])) * int(chunks[1])
    step = chunk if h * w * chunk <= 1 << 21 else 1
    parts = [(s, r) for s in range(0, n, step) for r in range(0, h, rows)]

    def extremes(part: tuple[int, int]) -> tuple[np.float32, np.float32]:
        s, r = part
        part_view = stack[s : s + step, r : r + rows] if stack.ndim >= 3 else stack[s : s + step]
        block = np.asarray(part_view, dtype=np.float32)
        return block.min(), block.max()

    workers = min(8, os.cpu_count() or 1, len(parts))
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="faket-range") as pool:
            found = list(pool.map(extremes, parts))
    else:
        found = [extremes(p) for p in parts]
    lo, hi = np.float32(np.inf), np.float32(-np.inf)
    for a, b in found:
        lo, hi = min(lo, a), max(hi, b)
    return np.float32(lo), np.float32(hi)


def to_unit(images: ArrayOrTensor, lo: float | np.floating, hi: float | np.floating) -> ArrayOrTensor:
    """Scale images to [0, 1] with a stack's range: ``(x - lo) / (hi - lo)`` in float32.

    images: an array (returns a new float32 array) or a tensor (returns a float32 tensor on
    its device: the NST scales on the GPU). Same float32 arithmetic as the published
    ``x -= x.min(); x /= x.max()`` (a true division, by a tensor, never by a reciprocal).
    A constant stack (hi == lo) maps to zeros.
    """
    if not torch.is_tensor(images):
        return to_unit(as_tensor(images, "cpu"), lo, hi).numpy()
    x = images.to(torch.float32, copy=True)
    x -= torch.tensor(np.float32(lo), device=x.device)
    span = np.float32(np.float32(hi) - np.float32(lo))
    if span > 0:
        x /= torch.tensor(span, device=x.device)
    return x


def match_tilt_stats(images: ArrayOrTensor, reference: ArrayOrTensor) -> ArrayOrTensor:
    """Give each tilt the std and then the mean of the same reference tilt.

    images, reference: ``(n, H, W)`` arrays or tensors on one device (sizes may differ;
    stats are per tilt, population std). Returns float32 of the images' kind.
    A constant tilt keeps its shape and gets the mean.
    """
    if not torch.is_tensor(images):
        return match_tilt_stats(as_tensor(images, "cpu"), as_tensor(reference, "cpu")).numpy()
    x = images.to(torch.float32, copy=True)
    ref = torch.as_tensor(reference).to(x.device, torch.float32)
    n = x.shape[0]

    def std_mean(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # float64 sums: batch-independent
        std, mean = torch.std_mean(t.reshape(n, -1).double(), dim=-1, correction=0)
        return std.float().reshape(-1, 1, 1), mean.float().reshape(-1, 1, 1)

    s1, _ = std_mean(x)
    s2, m2 = std_mean(ref)
    x = torch.where(s1 > 0, x / torch.where(s1 > 0, s1, 1.0) * s2, x)
    x -= x.reshape(n, -1).double().mean(-1).float().reshape(-1, 1, 1) - m2
    return x
