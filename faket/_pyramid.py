"""The NST's multi-scale pyramid: scales, sizes at a scale, image and moment resizing."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def gen_scales(min_scale: int, end_scale: int) -> list[int]:
    """Scales from end_scale down by factors of sqrt(2) to min_scale, ascending."""
    scales, i, s = set(), 0, end_scale
    while s >= min_scale:
        scales.add(s)
        i += 1
        s = round(end_scale / 2 ** (i / 2))
    return sorted(scales)


def size_at_scale(h: int, w: int, scale: int, scale_up: bool = True) -> tuple[int, int]:
    """(h, w) resized so that the longest side is ``scale`` (aspect kept)."""
    if not scale_up and max(h, w) <= scale:
        return h, w
    if h > w:
        return scale, round(scale * w / h)
    return round(scale * h / w), scale


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` images with antialiased bilinear interpolation."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _interp(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # bicubic/bilinear at the same size is the identity
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
