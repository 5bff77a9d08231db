"""Neural style transfer of tilt-series (method section 3), exact to the published code.

Per tilt i: content image = CONTENT[i], style image = reference[i], start
image = NOISY[i]. Each stack is scaled to [0, 1] by its own min and max
(:func:`stack_range`, :func:`to_unit`), the start image is optimised with Adam
against VGG-19 content and Gram-matrix style losses, the result is the
bias-corrected moving average of the iterates, and finally each tilt gets the
mean and std of the reference tilt (:func:`match_tilt_stats`).

Several tilts go through the network in one call (``batch_size``); every
loss, Gram matrix and scaled error stays per tilt, so the result does not
depend on the batch size. The per-tilt functions take the stack range as an
argument so that a worker can process one tilt of a large stack alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, cast

import numpy as np
import torch

from ._memory import stylize_batch_fitting
from ._optim import _EMA, Adam
from ._pyramid import _interp, _resize, gen_scales, size_at_scale
from ._scaling import match_tilt_stats, stack_range, to_unit
from ._stacks import (  # stack level, in this API
    check_stacks,
    iter_stylize,
    nst_batches,
    stylize_stack,
    stylize_tilts,
)
from ._tiling import TiledSteps, check_memory_budget, tile_cuts
from ._transfer import upload
from .errors import FaketInputError
from .losses import SCALED_ERROR_EPS, gram, normalised_weights, scaled_error, tv_loss
from .reproducible import check_precision, configure_device, requested
from .settings import NSTSettings
from .vgg import VGGFeatures, check_layers, min_input_size

__all__ = [
    "SCALED_ERROR_EPS",
    "Adam",
    "BatchResult",
    "StyleTransfer",
    "check_stacks",
    "gen_scales",
    "gram",
    "iter_stylize",
    "nst_batches",
    "match_tilt_stats",
    "normalised_weights",
    "scaled_error",
    "size_at_scale",
    "stack_range",
    "stylize_batch_fitting",
    "stylize_stack",
    "stylize_tilts",
    "tile_cuts",
    "to_unit",
    "tv_loss",
    "upload",
    "validate_settings",
]


# --------------------------------------------------------------------------- engine
@dataclass
class BatchResult:
    """Stylised tilts in [0, 1] ``(B, H, W)`` and the last total loss of each tilt ``(B,)``."""

    images: torch.Tensor
    losses: torch.Tensor


def fuse_default(device: str | torch.device) -> bool:
    """Whether the network runs cuDNN's fused convolution + bias + ReLU by default (faket._fused).

    On CUDA, in every precision mode: at 4096^2 on an H100 it took a tf32 tilt from 0.415 to
    0.363 s with the same largest difference from the published arithmetic (4.2e-4); under
    bf16 autocast the fused step runs in bfloat16 as the unfused layers would (H200: 0.300 ->
    0.274 s). Not on the CPU (no fused kernel; the layers would be the same), and not under the
    reproducible switch (strict float32 keeps PyTorch's own layers).
    """
    return torch.device(device).type == "cuda" and not requested()


class StyleTransfer(TiledSteps):
    """A VGG-19 loaded once on a device, stylising batches of tilts with fixed settings.

    weights: a checked VGG-19 features state dict (:mod:`faket.weights`).
    dtype: float32 (the published arithmetic); float64 serves exactness checks.

    On the CPU the golden fixtures are reproduced bit for bit with
    ``batch_size=1``. Batches are exact in arithmetic (every loss is per tilt)
    but convolution kernels sum in another order for batches, and the signed
    first Adam step amplifies that round-off on the few pixels whose gradient
    is near zero, so ``batch_size`` defaults to 1 (see README, "Batching").
    """

    def __init__(
        self,
        weights: dict[str, torch.Tensor],
        settings: NSTSettings = NSTSettings(),
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        channels_last: bool = False,
        compile: bool = False,
        fuse_conv_relu: bool | None = None,
    ) -> None:
        validate_settings(settings)
        self.settings = settings
        self.device = torch.device(device)
        self.dtype = dtype
        self.content_layers = list(settings.content_layers)
        self.style_layers = list(settings.style_layers)
        self.content_weights = [
            w * settings.content_weight
            for w in normalised_weights(settings.content_layer_weights, "content layer")
        ]
        self.style_weights = normalised_weights(settings.style_layer_weights, "style layer")
        self.net = VGGFeatures(weights, self.content_layers + self.style_layers, pooling=settings.pooling).to(
            self.device, dtype
        )
        self.min_size = min_input_size(self.net.last)
        check_memory_budget(settings, torch.empty((), dtype=dtype).element_size())
        # Execution experiments (benchmarks/run.py --experiments measures them):
        # NHWC activations, and the network compiled by torch.compile (inductor).
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._net = torch.compile(self.net, dynamic=False) if compile else self.net
        # Process-wide switches: "auto" keeps PyTorch's CUDA default (TF32 cuDNN
        # convolutions, the published arithmetic) and adds TF32 Gram matmuls;
        # float32 means float32 here.
        # FAKET_REPRODUCIBLE gives strict float32 and deterministic algorithms.
        self.precision = configure_device(self.device, settings.precision)
        # cuDNN's fused conv + bias + ReLU (faket._fused)
        fuse = fuse_default(self.device) if fuse_conv_relu is None else fuse_conv_relu
        self.net.fuse_conv_relu = fuse
        #: What :func:`stylize_batch_fitting` did after running out of device memory.
        self.memory_fallbacks: list[str] = []

    def _features(self, x: torch.Tensor, layers) -> dict[int, torch.Tensor]:
        """Network features; under bfloat16 autocast when ``precision`` is bf16 (then cast back)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision != "bf16":
            return self._net(x, tuple(layers))
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            feats = self._net(x, tuple(layers))
        return {k: v.to(self.dtype) for k, v in feats.items()}

    def _as_batch(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        return t.to(self.device, self.dtype)[:, None].expand(-1, 3, -1, -1)

    def _scales(self, h: int, w: int) -> list[int]:
        """The pyramid's scales (long-edge sizes in pixels) for ``h x w`` content images."""
        if min(h, w) < self.min_size:
            raise FaketInputError(
                f"images are {h}x{w} but the layers used need at least {self.min_size}x{self.min_size}"
            )
        end_scale = self.settings.end_scale or max(h, w)
        return gen_scales(min(self.settings.min_scale or end_scale, end_scale), end_scale)

    def style_targets(
        self,
        styles: Sequence[np.ndarray | torch.Tensor],
        content_size: tuple[int, int],
        style_image_weights: Sequence[float] | None = None,
    ) -> dict[int, dict[int, torch.Tensor]]:
        """Style Gram targets per scale: ``{scale: {layer: (B, C, C)}}``.

        styles: one or more ``(B, Hs, Ws)`` stacks in [0, 1] (the same tilts);
        content_size: ``(H, W)`` of the content images they will style (it sets
        the scales). Depends only on the style images and the settings, so one
        result serves every content stack styled by the same style tilts
        (:meth:`stylize_batch` ``style_targets=``), bit for bit.
        """
        style_ts = [self._as_batch(st) for st in styles]
        n_styles = len(style_ts)
        sw = (
            [1 / n_styles] * n_styles
            if style_image_weights is None
            else normalised_weights(style_image_weights, "style image")
        )
        out: dict[int, dict[int, torch.Tensor]] = {}
        with torch.no_grad():
            for scale in self._scales(*content_size):
                targets: dict[int, torch.Tensor] = {}
                for k, style_t in enumerate(style_ts):
                    sh, sww = size_at_scale(
                        int(style_t.shape[-2]), int(style_t.shape[-1]), scale, scale_up=False
                    )
                    grams = self._grams(_resize(style_t, (sh, sww)))
                    for layer in self.style_layers:
                        g = grams[layer] * sw[k]
                        targets[layer] = g if layer not in targets else targets[layer] + g
                    del grams
                out[scale] = targets
        return out

    def stylize_batch(
        self,
        content: np.ndarray | torch.Tensor,
        styles: Sequence[np.ndarray | torch.Tensor] | None,
        init: np.ndarray | torch.Tensor | None = None,
        style_image_weights: Sequence[float] | None = None,
        generator: torch.Generator | None = None,
        style_targets: dict[int, dict[int, torch.Tensor]] | None = None,
    ) -> BatchResult:
        """Stylise a batch of tilts already scaled to [0, 1].

        content: ``(B, H, W)``; styles: one or more ``(B, Hs, Ws)`` (same tilts),
        or None when ``style_targets`` (from :meth:`style_targets`) are given;
        init: ``(B, H, W)`` start images, or None to start from ``settings.init``.
        style_image_weights: relative weights of the style stacks (normalised to 1).
        Returns the result in [0, 1], averaged over the 3 channels.
        """
        s = self.settings
        content_t = self._as_batch(content)
        b, _, h, w = content_t.shape
        scales = self._scales(h, w)
        if style_targets is None:
            if not styles:
                raise ValueError("give style images or style targets")
            style_targets = self.style_targets(styles, (h, w), style_image_weights)
        elif set(style_targets) != set(scales):
            raise ValueError(f"style targets for scales {sorted(style_targets)}, these images need {scales}")
        elif any(g.shape[0] != b for t in style_targets.values() for g in t.values()):
            raise ValueError(
                f"style targets are for batches of "
                f"{next(iter(style_targets[scales[0]].values())).shape[0]} tilts, "
                f"the content has {b}"
            )  # would broadcast silently otherwise

        ch, cw = size_at_scale(h, w, scales[0])
        if init is not None:
            image = _resize(self._as_batch(init), (ch, cw))
        elif s.init == "content":
            image = _resize(content_t, (ch, cw))
        elif s.init == "gray":
            image = torch.rand((b, 3, ch, cw), generator=generator).to(self.device, self.dtype) / 255 + 0.5
        else:
            image = torch.rand((b, 3, ch, cw), generator=generator).to(self.device, self.dtype)

        opt: Adam | None = None
        average: _EMA | None = None
        losses = torch.zeros(b)
        for scale in scales:
            ch, cw = size_at_scale(h, w, scale)
            content_s = _resize(content_t, (ch, cw))
            image = _interp(image.detach(), (ch, cw), "bicubic").clamp(0, 1).contiguous()
            average = _EMA(image, s.avg_decay)
            image.requires_grad_()

            tiles = self._tiles(ch, cw, b)
            targets = style_targets[scale]
            with torch.no_grad():
                content_targets: dict[int, torch.Tensor] = {}  # only untiled steps use them
                if tiles is None:
                    cfeats = self._features(content_s, self.content_layers)
                    content_targets = {i: cfeats[i] for i in self.content_layers}
                    del cfeats

            opt = Adam(image, s.step_size) if opt is None else opt.moved_to(image)

            n_iter = s.initial_iterations if scale == scales[0] else s.iterations
            for _ in range(n_iter):
                if tiles is None:
                    grad, per_tilt = self._gradient(image, content_targets, targets)
                else:
                    grad, per_tilt = self._tiled_gradient(image, content_s, targets, tiles)
                opt.step(grad)
                with torch.no_grad():
                    image.clamp_(0, 1)
                average.update(image)
                losses = per_tilt.detach()  # stays on the device: no host sync per step
                del grad, per_tilt
            with torch.no_grad():
                image.copy_(average.get())
        assert average is not None  # one scale at least
        out = average.get().detach().clamp(0, 1).mean(dim=1)
        return BatchResult(out, losses.cpu())

    # ---------------------------------------------------------------- one step, whole images
    def _gradient(
        self,
        image: torch.Tensor,
        content_targets: dict[int, torch.Tensor],
        style_targets: dict[int, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient of the total loss w.r.t. ``image`` and the per-tilt loss ``(B,)``."""
        feats = self._features(image, self.content_layers + self.style_layers)
        terms = []
        for layer, wt in zip(self.content_layers, self.content_weights):
            terms.append(scaled_error(feats[layer], content_targets[layer]) * wt)
        for layer, wt in zip(self.style_layers, self.style_weights):
            terms.append(scaled_error(gram(feats[layer]), style_targets[layer]) * wt)
        if self.settings.tv_weight:
            terms.append(tv_loss(image) * self.settings.tv_weight)
        per_tilt = cast(torch.Tensor, sum(terms))
        (grad,) = torch.autograd.grad(per_tilt.sum(), image)
        return grad, per_tilt.detach()


def validate_settings(s: NSTSettings) -> None:
    """Refuse impossible combinations of NST settings with one clear line.

    Types, ranges and names of each value are checked when the settings are made
    (:class:`faket.settings.NSTSettings`); this checks what spans several values.
    """
    check_layers(s.content_layers, "content")
    check_layers(s.style_layers, "style")
    if len(s.content_layer_weights) != len(s.content_layers):
        raise FaketInputError(
            f"{len(s.content_layers)} content layers but {len(s.content_layer_weights)} content layer weights"
        )
    if len(s.style_layer_weights) != len(s.style_layers):
        raise FaketInputError(
            f"{len(s.style_layers)} style layers but {len(s.style_layer_weights)} style layer weights"
        )
    check_precision(s.precision)
    check_memory_budget(s)
