"""Deterministic VGG-19 stand-in weights, rebuilt from the recipe of the golden fixtures.

Each convolution of the features stack gets values from SplitMix64 hashes of
integer keys (not from a random generator, so they never change between
library versions): key = (layer index << 32) + offset + k, u = top 24 bits of
the hash / 2**24, weight = (u - 0.5) * sqrt(12) * sqrt(2 / (out * 9)), bias =
(u - 0.5) * 0.2 with offset 2**31. These are the weights the golden outputs
were made with; they make tests independent of any download.
"""

from __future__ import annotations

import numpy as np
import torch

from faket.vgg import CONV_CHANNELS, CONV_INDICES

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (x ^ (x >> np.uint64(31))) & _MASK


def _unit(layer: int, offset: int, count: int) -> np.ndarray:
    keys = (np.uint64(layer) << np.uint64(32)) + np.uint64(offset) + np.arange(count, dtype=np.uint64)
    return (_splitmix64(keys) >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def test_state_dict() -> dict[str, torch.Tensor]:
    """The golden fixtures' VGG-19 weights as a torchvision-layout state dict."""
    out = {}
    c_in = 3
    for idx, c_out in zip(CONV_INDICES, CONV_CHANNELS):
        n = c_out * c_in * 9
        scale = np.sqrt(12.0) * np.sqrt(2.0 / (c_out * 9))
        w = ((_unit(idx, 0, n) - 0.5) * scale).astype(np.float32).reshape(c_out, c_in, 3, 3)
        b = ((_unit(idx, 1 << 31, c_out) - 0.5) * 0.2).astype(np.float32)
        out[f"features.{idx}.weight"] = torch.from_numpy(w)
        out[f"features.{idx}.bias"] = torch.from_numpy(b)
        c_in = c_out
    return out
