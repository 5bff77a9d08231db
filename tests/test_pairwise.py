"""faket._pairwise.blocked_sum: numpy's pairwise sum of a whole array, made block by block."""

from __future__ import annotations

import numpy as np
import pytest

from faket._pairwise import BLOCK, BLOCK_MAX, block_for, blocked_sum, blocks


@pytest.mark.parametrize("n", [1, 7, 127, 128, 129, 1000, 8193, BLOCK, BLOCK + 1, 3 * BLOCK + 17, 1023 * 777])
@pytest.mark.parametrize("block", [128, 1000, BLOCK])
def test_blocked_sum_is_numpys_sum_bit_for_bit(n, block):
    values = np.random.default_rng(n).standard_normal(n) * 1e3 + 7.25
    calls: list[tuple[int, int]] = []

    def part(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        return values[start:stop] * 1.0  # a fresh copy, as a pass that makes the values gives

    assert blocked_sum(n, part, block) == np.add.reduce(values, axis=None)
    assert calls[0][0] == 0 and calls[-1][1] == n and max(b - a for a, b in calls) <= max(block, 128)
    assert all(b == c for (_, b), (c, _) in zip(calls, calls[1:]))   # consecutive, in order


def test_a_two_dimensional_sum_is_the_flat_one():
    image = np.random.default_rng(3).random((1023, 777)) * 50
    flat = image.reshape(-1)
    assert blocked_sum(flat.size, lambda a, b: flat[a:b]) == np.add.reduce(image, axis=None) == image.sum()


def test_blocks_cover_the_range_once():
    assert list(blocks(10, 4)) == [0]              # at least numpy's 128-element leaf
    starts = list(blocks(3 * BLOCK + 5))
    assert starts == [0, BLOCK, 2 * BLOCK, 3 * BLOCK]


def test_block_for_grows_with_the_threads_up_to_its_largest():
    sizes = [block_for(t) for t in range(0, 40)]
    assert sizes[0] == sizes[1] == BLOCK and sizes[2] == 2 * BLOCK and sizes[4] == 4 * BLOCK
    assert sizes[9] == sizes[16] == sizes[39] == BLOCK_MAX
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
