"""Exact tiling of one NST step, for images larger than memory (a part of :class:`StyleTransfer`).

Each tile is extended by a halo covering the deepest layer's reach; pass 1 sums
what the losses need over the whole image (Gram matrices, the content error's
sums), pass 2 back-propagates each tile's share with those sums fixed. Tiles
line up with the run store's ``TILE_GRID`` chunks (:func:`tile_cuts`).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch

from .errors import FaketInputError
from .losses import SCALED_ERROR_EPS, gram, scaled_error, tv_loss
from .settings import TILE_GRID
from .vgg import activation_floats_per_pixel, min_input_size, tile_halo

#: Measured peak device memory over the activation floats of one forward and
#: backward pass (:func:`faket.vgg.activation_floats_per_pixel`): 0.58-0.61 on
#: an H200 from 1024^2 to 4092 x 5760, batch 1, float32 / TF32 / bf16
#: (benchmarks/results/gpu-h200-20261126); ``make bench-gpu`` re-measures it.
PEAK_FACTOR = 0.62
#: What the network, cuDNN workspaces and the optimiser's small tensors add (bytes).
PEAK_FIXED_BYTES = 256 * 2**20


def predict_peak_bytes(h: int, w: int, batch: int, last_layer: int, itemsize: int = 4) -> int:
    """Predicted peak device memory (bytes) of NST steps on ``batch`` tilts of ``h x w`` pixels.

    last_layer: the deepest VGG layer used; itemsize: bytes per float (4 for float32).
    """
    floats = activation_floats_per_pixel(last_layer) * h * w * batch
    return int(floats * itemsize * PEAK_FACTOR + PEAK_FIXED_BYTES)


def free_device_bytes(device: torch.device) -> int | None:
    """Memory a CUDA device can still give this process (free + cached by torch), or None on CPU."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(0.9 * (free + cached))


def check_memory_budget(settings: Any, itemsize: int = 4) -> None:
    """Refuse a memory budget below what one 64 x 64 tile (with its halo) needs, before any work.

    settings: :class:`faket.settings.NSTSettings`; itemsize: bytes per float (4 for float32).
    """
    if settings.memory_budget_gb is None:
        return
    last = max((*settings.content_layers, *settings.style_layers))
    halo = tile_halo(last)
    need = predict_peak_bytes(64 + 2 * halo, 64 + 2 * halo, 1, last, itemsize)  # batches are split to fit
    if settings.memory_budget_gb * 2**30 < need:
        raise FaketInputError(
            f"memory budget {settings.memory_budget_gb:g} GB is below what one 64x64 tile with its "
            f"{halo}-pixel halo needs ({need / 2**30:.3g} GB): raise it"
        )


class TiledSteps:
    """The tiled step of :class:`faket.nst.StyleTransfer` (a mixin: it uses its network,
    settings, layers and weights)."""

    settings: Any
    device: torch.device
    net: Any
    dtype: torch.dtype
    min_size: int
    content_layers: list[int]
    style_layers: list[int]
    content_weights: list[float]
    style_weights: list[float]
    _features: Any

    def _tiles(
        self, h: int, w: int, b: int
    ) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]] | None:
        """Tiles (inner y0, y1, x0, x1; padded y0, y1, x0, x1) of an h x w image, or None."""
        s = self.settings
        align = self.min_size
        halo = tile_halo(self.net.last)
        tile = s.tile_size
        budget = self.memory_budget_bytes()
        if tile is None and budget is not None:
            per_px = predict_peak_bytes(1, 1, b, self.net.last, self.dtype.itemsize) - PEAK_FIXED_BYTES
            px = (budget - PEAK_FIXED_BYTES) / per_px
            if px >= h * w:
                return None
            tile = int(math.sqrt(max(px, 0))) - 2 * halo
            if tile < align:
                raise FaketInputError(
                    f"memory budget {budget / 2**30:.3g} GB is too small for "
                    f"tiles with a {halo}-pixel halo: raise --max-memory or use a larger device"
                )
        if tile is None or tile >= max(h, w):
            return None
        tile = max(align, tile // align * align)
        ys, xs = tile_cuts(h, tile, align), tile_cuts(w, tile, align)
        out = []
        for y0, y1 in zip(ys[:-1], ys[1:]):
            for x0, x1 in zip(xs[:-1], xs[1:]):
                out.append(
                    (
                        (y0, y1, x0, x1),
                        (max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)),
                    )
                )
        return out

    def memory_budget_bytes(self) -> int | None:
        """The device memory NST may use: ``--max-memory``, else the CUDA device's free memory
        (None: unlimited, on the CPU)."""
        if self.settings.memory_budget_gb is not None:
            return int(self.settings.memory_budget_gb * 2**30)
        return free_device_bytes(self.device)

    def _inner(self, feats: torch.Tensor, layer: int, inner, padded) -> torch.Tensor:
        """The part of a tile's features that lies in its inner region."""
        f = min_input_size(layer)  # the layer's downsampling
        (y0, y1, x0, x1), (py0, _, px0, _) = inner, padded
        return feats[..., (y0 - py0) // f : (y1 - py0) // f, (x0 - px0) // f : (x1 - px0) // f]

    def _grams(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """Gram matrices of the style layers of ``images`` (B, 3, H, W), in tiles if configured."""
        tiles = self._tiles(int(images.shape[-2]), int(images.shape[-1]), int(images.shape[0]))
        if tiles is None:
            feats = self._features(images, self.style_layers)
            return {layer: gram(feats[layer]) for layer in self.style_layers}
        sums: dict[int, torch.Tensor] = {}
        count = dict.fromkeys(self.style_layers, 0)
        for inner, padded in tiles:
            py0, py1, px0, px1 = padded
            feats = self._features(images[..., py0:py1, px0:px1], self.style_layers)
            for layer in self.style_layers:
                m = self._inner(feats[layer], layer, inner, padded).flatten(-2)
                g = m @ m.transpose(-2, -1)
                sums[layer] = g if layer not in sums else sums[layer] + g
                count[layer] += m.shape[-1]
        return {layer: sums[layer] / count[layer] for layer in self.style_layers}

    def _tiled_gradient(
        self, image: torch.Tensor, content: torch.Tensor, style_targets: dict[int, torch.Tensor], tiles
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same gradient as :meth:`_gradient`, computed tile by tile.

        Pass 1 accumulates what the losses sum over the whole image (Gram
        matrices; sums of |d| and d^2 of the content error). Pass 2
        back-propagates each tile's share of the loss gradient, with those
        global sums fixed, and adds the tiles' input gradients (halos overlap).
        """
        cl, sl = self.content_layers, self.style_layers
        eps = SCALED_ERROR_EPS
        with torch.no_grad():
            sums: dict[int, torch.Tensor] = {}
            count = dict.fromkeys(sl, 0)
            s1: dict[int, Any] = {layer: 0.0 for layer in cl}
            s2: dict[int, Any] = {layer: 0.0 for layer in cl}
            for inner, padded in tiles:
                py0, py1, px0, px1 = padded
                f = self._features(image[..., py0:py1, px0:px1], cl + sl)
                c = self._features(content[..., py0:py1, px0:px1], cl)
                for layer in sl:
                    m = self._inner(f[layer], layer, inner, padded).flatten(-2)
                    g = m @ m.transpose(-2, -1)
                    sums[layer] = g if layer not in sums else sums[layer] + g
                    count[layer] += m.shape[-1]
                for layer in cl:
                    d = (
                        self._inner(f[layer], layer, inner, padded)
                        - self._inner(c[layer], layer, inner, padded)
                    ).flatten(1)
                    s1[layer] = s1[layer] + d.abs().sum(1)
                    s2[layer] = s2[layer] + d.pow(2).sum(1)
                del f, c
        grams = {layer: (sums[layer] / count[layer]).requires_grad_() for layer in sl}
        style_terms = [
            scaled_error(grams[layer], style_targets[layer]) * wt for layer, wt in zip(sl, self.style_weights)
        ]
        d_grams = torch.autograd.grad(
            cast(torch.Tensor, sum(style_terms)).sum(), [grams[layer] for layer in sl]
        )
        coef = {layer: (dg + dg.transpose(-2, -1)) / count[layer] for layer, dg in zip(sl, d_grams)}
        content_terms = [s2[layer] / (s1[layer] + eps) * wt for layer, wt in zip(cl, self.content_weights)]
        per_tilt = cast(torch.Tensor, sum(content_terms) + sum(t.detach() for t in style_terms))

        grad = torch.zeros_like(image)
        for inner, padded in tiles:
            py0, py1, px0, px1 = padded
            xt = image[..., py0:py1, px0:px1].detach().requires_grad_()
            f = self._features(xt, cl + sl)
            with torch.no_grad():
                c = self._features(content[..., py0:py1, px0:px1], cl)
            surrogate = torch.zeros((), dtype=image.dtype, device=image.device)
            for layer in sl:
                m = self._inner(f[layer], layer, inner, padded)
                flat = m.flatten(-2)
                g_m = (coef[layer] @ flat.detach()).view_as(m)
                surrogate = surrogate + (g_m * m).sum()
            for layer, wt in zip(cl, self.content_weights):
                m = self._inner(f[layer], layer, inner, padded)
                d = m.detach() - self._inner(c[layer], layer, inner, padded)
                den = (s1[layer] + eps).view(-1, 1, 1, 1)
                g_m = wt * (2 * d / den - s2[layer].view(-1, 1, 1, 1) * torch.sign(d) / den**2)
                surrogate = surrogate + (g_m * m).sum()
            (g,) = torch.autograd.grad(surrogate, xt)
            grad[..., py0:py1, px0:px1] += g
            del f, c, g
        if self.settings.tv_weight:
            tv_image = image.detach().requires_grad_()
            tv = tv_loss(tv_image) * self.settings.tv_weight
            grad += torch.autograd.grad(tv.sum(), tv_image)[0]
            per_tilt = per_tilt + tv.detach()
        return grad, per_tilt.detach()


def tile_cuts(n: int, tile: int, align: int = 16) -> list[int]:
    """Tile boundaries along an axis of ``n`` pixels: tiles of at most ``tile`` pixels.

    The tiles line up with the store's ``TILE_GRID`` chunks: below the chunk
    edge each chunk is split into equal parts (multiples of ``align``, the
    pooling alignment), above it tiles are whole multiples of chunks. Every
    chunk edge is a tile edge. Returns ``[0, ..., n]``.
    """
    if tile >= TILE_GRID:
        step = tile // TILE_GRID * TILE_GRID
        return [*range(0, n, step), n]
    per_tile = max(1, tile // align)  # align-blocks per tile at most
    cuts = []
    for c0 in range(0, n, TILE_GRID):
        blocks = -(-(min(c0 + TILE_GRID, n) - c0) // align)
        parts = -(-blocks // per_tile)
        base, extra = divmod(blocks, parts)
        pos = c0
        for j in range(parts):
            cuts.append(pos)
            pos += (base + (j < extra)) * align
    return [*cuts, n]
