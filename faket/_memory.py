"""Out of device memory never ends a run: the batch is split, then the tilt tiled (a part of faket.nst)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ._tiling import predict_peak_bytes
from .errors import FaketInputError


def _batch_part(x: Any, part: slice) -> Any:
    """Tilts ``part`` of a batch: an array, a list of arrays, or style targets {scale: {layer: t}}."""
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: _batch_part(v, part) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_batch_part(v, part) for v in x]
    return x[part]


def stylize_batch_fitting(
    transfer: Any,
    content: np.ndarray | torch.Tensor,
    styles: Sequence[np.ndarray | torch.Tensor] | None,
    init: np.ndarray | torch.Tensor | None,
    style_image_weights: Sequence[float] | None = None,
    **kw: Any,
) -> Any:
    """``transfer.stylize_batch`` (a :class:`faket.nst.StyleTransfer`), never ended by the
    device running out of memory.

    On ``torch.OutOfMemoryError`` the batch is split in halves (every loss is per
    tilt, so each half gives what it would alone); a single tilt that does not fit
    is computed in tiles (exact up to round-off), the tile edge halved until it
    fits or reaches the network's smallest input. The chosen tile size is kept
    for later batches; ``transfer.memory_fallbacks`` lists what was done.
    """
    b, h, w = (int(n) for n in content.shape)
    budget = transfer.memory_budget_bytes()
    if b > 1 and budget is not None and transfer.settings.tile_size is None:
        need = predict_peak_bytes(h, w, b, transfer.net.last, transfer.dtype.itemsize)
        if need > budget:  # the calibrated model says it would not fit: split before trying
            why = f"predicted {need / 2**30:.1f} GB > {budget / 2**30:.1f} GB"
            return _split(transfer, content, styles, init, style_image_weights, kw, why)
    try:
        return transfer.stylize_batch(content, styles, init, style_image_weights, **kw)
    except torch.OutOfMemoryError as err:
        if transfer.device.type == "cuda":
            torch.cuda.empty_cache()
        if b > 1:
            return _split(transfer, content, styles, init, style_image_weights, kw, "out of memory")
        current = transfer.settings.tile_size or max(h, w)
        tile = current // 2 // transfer.min_size * transfer.min_size
        if tile < transfer.min_size:
            raise FaketInputError(
                f"one {h}x{w} tilt does not fit the device's memory even in "
                f"{current}-pixel tiles: use a device with more memory ({err})".splitlines()[0]
            ) from None
        transfer.memory_fallbacks.append(f"{h}x{w} tilt tiled at {tile} pixels")
        transfer.settings = transfer.settings.model_copy(update={"tile_size": tile})
        return stylize_batch_fitting(transfer, content, styles, init, style_image_weights, **kw)


def _split(transfer: Any, content: Any, styles: Any, init: Any, weights: Any, kw: dict, why: str) -> Any:
    """Stylise a batch as two halves (every loss is per tilt: each half gives what it would alone)."""
    from .nst import BatchResult

    b = int(content.shape[0])
    transfer.memory_fallbacks.append(f"batch of {b} split in halves ({why})")
    halves = (slice(0, (b + 1) // 2), slice((b + 1) // 2, b))
    parts = [
        stylize_batch_fitting(
            transfer,
            content[p],
            _batch_part(styles, p),
            _batch_part(init, p),
            weights,
            **{**kw, "style_targets": _batch_part(kw.get("style_targets"), p)},
        )
        for p in halves
    ]
    return BatchResult(torch.cat([q.images for q in parts]), torch.cat([q.losses for q in parts]))
