"""The NST's losses, per tilt: scaled squared error, Gram matrices, total variation.

Every function keeps the batch axis: ``(B, ...)`` in, ``(B,)`` or ``(B, C, C)`` out,
so a batch of tilts gives what each tilt alone gives.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import FaketInputError

SCALED_ERROR_EPS = 1e-8


def scaled_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-item scaled squared error ``sum(d^2) / (sum(|d|) + 1e-8)``, ``d = x - target``.

    x, target: ``(B, ...)``. Returns ``(B,)``.
    """
    d = x - target
    return d.pow(2).flatten(1).sum(1) / d.abs().flatten(1).sum(1).add(SCALED_ERROR_EPS)


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices ``F F^T / (h w)`` of features ``(B, C, h, w)``: ``(B, C, C)``."""
    mat = features.flatten(-2)
    return mat @ mat.transpose(-2, -1) / mat.shape[-1]


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Per-item L2 total variation (mean over channels and pixels) of ``(B, C, H, W)``: ``(B,)``."""
    x = F.pad(x, (0, 1, 0, 1), "replicate")
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx**2 + dy**2).flatten(1).mean(1)


def normalised_weights(weights: Sequence[float], what: str) -> list[float]:
    """Divide a list of layer weights by the sum of their absolute values."""
    total = sum(abs(float(w)) for w in weights)
    if total == 0:
        raise FaketInputError(f"{what} weights are all zero: give at least one non-zero weight")
    return [float(w) / total for w in weights]
