"""The NST's losses, per tilt: scaled squared error, Gram matrices, total variation.

Every function keeps the batch axis: ``(B, ...)`` in, ``(B,)`` or ``(B, C, C)`` out,
so a batch of tilts gives what each tilt alone gives.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .errors import FaketInputError

SCALED_ERROR_EPS = 1e-8


class _ScaledError(torch.autograd.Function):
    """``sum(d^2) / (sum|d| + eps)`` per item, its gradient ``(2 d - (s2 / s1) sign d) / s1``
    computed in one pass over the saved difference (autograd would keep ``d``,
    ``d^2`` and ``|d|`` and run a pass for each)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = x - target
        s2 = d.pow(2).flatten(1).sum(1)
        s1 = d.abs().flatten(1).sum(1).add(SCALED_ERROR_EPS)
        ctx.save_for_backward(d, s1, s2)
        return s2 / s1

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        d, s1, s2 = ctx.saved_tensors
        shape = (-1,) + (1,) * (d.dim() - 1)
        g_s2 = (g / s1).view(shape)  # d loss / d s2
        g_s1 = (-g * ((s2 / s1) / s1)).view(shape)  # d loss / d s1, in autograd's order
        return g_s2 * (d * 2) + g_s1 * d.sign(), None


def scaled_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-item scaled squared error ``sum(d^2) / (sum(|d|) + 1e-8)``, ``d = x - target``.

    x, target: ``(B, ...)``; ``target`` takes no gradient. Returns ``(B,)``.
    """
    if target.requires_grad:
        d = x - target
        return d.pow(2).flatten(1).sum(1) / d.abs().flatten(1).sum(1).add(SCALED_ERROR_EPS)
    return _ScaledError.apply(x, target)


class _Gram(torch.autograd.Function):
    """``G = M M^T / n`` with its gradient written directly: ``dM = (dG + dG^T) M / n``.

    Autograd's own backward of ``M @ M^T`` runs two batched matmuls (one through
    the transpose) and adds their activation-sized results; this runs one
    matmul of the ``(C, C)`` sum. Features in channels-last memory are read as
    ``(B, h w, C)`` without a copy.
    """

    @staticmethod
    def forward(ctx: Any, mat: torch.Tensor, n: int) -> torch.Tensor:  # mat: (B, C, n) view
        ctx.save_for_backward(mat)
        ctx.n = n
        return mat @ mat.transpose(-2, -1) / n

    @staticmethod
    def backward(ctx: Any, d_gram: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mat,) = ctx.saved_tensors
        coef = (d_gram + d_gram.transpose(-2, -1)) / ctx.n
        return coef @ mat, None


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices ``F F^T / (h w)`` of features ``(B, C, h, w)``: ``(B, C, C)``."""
    b, c = features.shape[:2]
    if features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
        mat = features.permute(0, 2, 3, 1).reshape(b, -1, c).transpose(-2, -1)  # no copy
    else:
        mat = features.flatten(-2)
    return _Gram.apply(mat, mat.shape[-1])


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
