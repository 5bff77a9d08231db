"""Sums of float64 values made block by block, equal bit for bit to numpy's sum of the whole array.

numpy sums a contiguous float64 array pairwise: ``n`` elements, if more than 128, are split at
``n // 2`` rounded down to a multiple of 8, each part is summed the same way and the two sums
are added. :func:`blocked_sum` follows the same splits down to parts of at most ``block``
elements and has numpy sum each part, so a pass that makes values a block at a time (while
they are in the CPU's cache) sums them in that same pass and still gives ``np.add.reduce`` of
the whole array (tested against it). The noise model's passes over 4096^2 tilts use it:
each elementwise step over the whole tilt would read and write 134 MB of float64.
:func:`centred`, :func:`deviation` and :func:`correlation` are the noise model's moments made so.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

#: Values per block: 256 KB of float64, about the size of a core's L2 cache.
BLOCK = 1 << 15
#: The largest block :func:`block_for` gives: 4 MB of float64.
BLOCK_MAX = 1 << 19
#: numpy sums at most this many elements without splitting them (its PW_BLOCKSIZE).
_NUMPY_PAIRWISE_LEAF = 128


def blocked_sum(n: int, values: Callable[[int, int], np.ndarray], block: int = BLOCK) -> np.float64:
    """The sum of ``n`` float64 values, ``values(start, stop)`` giving those of ``[start, stop)``.

    ``values`` is called on consecutive ranges that cover ``[0, n)`` in order, each at most
    ``block`` long; what it returns (float64, ``(stop - start,)``, e.g. a view of a scratch
    buffer) is summed before the next call. The result equals ``np.add.reduce`` over the
    concatenated values bit for bit.
    """
    block = max(block, _NUMPY_PAIRWISE_LEAF)

    def part(start: int, m: int) -> np.float64:
        if m <= block:
            return np.add.reduce(values(start, start + m), initial=0.0)
        half = m // 2
        half -= half % 8
        return part(start, half) + part(start + half, m - half)

    return part(0, n)


def blocks(n: int, block: int = BLOCK) -> range:
    """Start indices of consecutive blocks of ``block`` elements covering ``[0, n)``."""
    return range(0, n, max(block, _NUMPY_PAIRWISE_LEAF))


def block_for(threads: int) -> int:
    """The block size for passes that run on ``threads`` threads at once: :data:`BLOCK` for
    one, doubled per doubling of threads, at most :data:`BLOCK_MAX`.

    Each block costs a few numpy calls, and between them a thread holds Python's lock. One
    thread is fastest with L2-sized blocks; many threads queue for the lock instead. On an
    H100 machine's 16 cores, 15 threads made the noise of a 4096^2 tilt in 0.305 s per tilt
    with 2**15 values per block and 0.076 s with 2**19 (1 thread: 0.635 s; on one or two threads
    of the 2-core VM 2**19 made the noise 7-11% slower and the statistics up to 13%). Any size
    gives the same values bit for bit.
    """
    return min(BLOCK_MAX, BLOCK << max(0, threads - 1).bit_length())


# --------------------------------------------------------------------------- moments of a tilt
def centred(a: np.ndarray, block: int = BLOCK) -> tuple[np.float64, np.ndarray, np.float64]:
    """``a.mean()``, ``a - a.mean()`` and ``a.std()`` of an image in float64 (``a`` of any float
    type), bit for bit numpy's on ``a.astype(np.float64)`` (the same sums in the same order,
    tested), in two passes over the pixels, ``block`` values at a time (any size gives the same)."""
    flat = np.asarray(a).reshape(-1)
    d = np.empty(flat.size)

    def load(start: int, stop: int) -> np.ndarray:
        d[start:stop] = flat[start:stop]
        return d[start:stop]

    m = blocked_sum(flat.size, load, block) / flat.size
    return m, d.reshape(np.shape(a)), deviation(d, m, centre=True, block=block)


def deviation(x: np.ndarray, m: np.float64, centre: bool = False, block: int = BLOCK) -> np.float64:
    """``x.std()`` of a flat float64 array whose mean is ``m``, bit for bit; centre: ``x``
    becomes ``x - m`` on the way."""
    scratch = np.empty(min(x.size, block))

    def squares(start: int, stop: int) -> np.ndarray:
        w = scratch[: stop - start]
        if centre:
            x[start:stop] -= m
            np.multiply(x[start:stop], x[start:stop], out=w)
        else:
            np.subtract(x[start:stop], m, out=w)
            w *= w
        return w

    return np.sqrt(blocked_sum(x.size, squares, block) / x.size)


def correlation(
    za: np.ndarray, zb: np.ndarray, sa: np.float64, sb: np.float64, block: int = BLOCK
) -> tuple[float, float]:
    """r and sigma of two centred flat tilts and their stds: ``za /= sa``, ``zb /= sb``,
    ``r = mean(za * zb)``, ``sigma = (za - r * zb).std()``, bit for bit (``za`` is overwritten)."""
    scratch = np.empty(min(za.size, block))

    def products(start: int, stop: int) -> np.ndarray:
        za[start:stop] /= sa  # (a - mean) / std
        zb[start:stop] /= sb
        return np.multiply(za[start:stop], zb[start:stop], out=scratch[: stop - start])

    r = float(blocked_sum(za.size, products, block) / za.size)

    def residual(start: int, stop: int) -> np.ndarray:
        w = np.multiply(zb[start:stop], r, out=scratch[: stop - start])
        return np.subtract(za[start:stop], w, out=za[start:stop])

    return r, float(deviation(za, blocked_sum(za.size, residual, block) / za.size, block=block))
