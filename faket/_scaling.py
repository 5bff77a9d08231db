"""Stack scaling of the NST (method section 3): the stack range, [0, 1] scaling, per-tilt stats.

Each stack is scaled by its own min and max, as the published code does; the
range is an argument so that a worker can scale one tilt of a large stack alone.
"""

from __future__ import annotations

import numpy as np


def stack_range(stack: np.ndarray, chunk: int = 8) -> tuple[np.float32, np.float32]:
    """Min and max of a whole stack ``(n, H, W)``, read ``chunk`` tilts at a time."""
    lo, hi = np.float32(np.inf), np.float32(-np.inf)
    for s in range(0, stack.shape[0], chunk):
        part = np.asarray(stack[s : s + chunk], dtype=np.float32)
        lo, hi = min(lo, part.min()), max(hi, part.max())
    return np.float32(lo), np.float32(hi)


def to_unit(images: np.ndarray, lo: np.float32, hi: np.float32) -> np.ndarray:
    """Scale images to [0, 1] with a stack's range: ``(x - lo) / (hi - lo)`` in float32.

    Same float32 arithmetic as the published ``x -= x.min(); x /= x.max()``.
    A constant stack (hi == lo) maps to zeros.
    """
    x = np.array(images, dtype=np.float32, copy=True)
    x -= np.float32(lo)
    span = np.float32(np.float32(hi) - np.float32(lo))
    if span > 0:
        x /= span
    return x


def match_tilt_stats(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Give each tilt the std and then the mean of the same reference tilt.

    images, reference: ``(n, H, W)`` (sizes may differ; stats are per tilt).
    Returns float32 ``(n, H, W)``. A constant tilt keeps its shape and gets the mean.
    """
    x = np.array(images, dtype=np.float32, copy=True)
    n = x.shape[0]
    ref = np.asarray(reference, dtype=np.float32)
    s1 = x.reshape(n, -1).std(-1).reshape(-1, 1, 1)
    s2 = ref.reshape(n, -1).std(-1).reshape(-1, 1, 1)
    safe = np.where(s1 > 0, s1, np.float32(1))
    x = np.where(s1 > 0, x / safe * s2, x).astype(np.float32)
    m1 = x.reshape(n, -1).mean(-1).reshape(-1, 1, 1)
    m2 = ref.reshape(n, -1).mean(-1).reshape(-1, 1, 1)
    x -= m1 - m2
    return x
