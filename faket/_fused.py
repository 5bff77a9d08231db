"""Convolution, bias and ReLU in one step, with a hand-written input gradient (a part of faket.vgg).

On CUDA the forward is cuDNN's fused convolution + bias + activation
(``torch.cudnn_convolution_relu``): no separate bias-add and ReLU passes over
the activations (at 4096^2 the bias adds were most of the 92 ms of
``add_`` in 778 ms of GPU time, H100). The backward is what autograd runs for
the unfused layers (ReLU's ``threshold_backward`` on the output, then the
convolution's input gradient; the weights take none), so on the CPU, where
the forward is ``conv2d`` then ``relu``, both directions equal the unfused
network bit for bit (tested), also under bfloat16 autocast, where the three
inputs are cast as autocast casts them for ``conv2d``. The default on CUDA
(:func:`faket.nst.fuse_default`): at 4096^2 on an H100, 0.363 s per tilt against 0.415 s unfused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

#: The dtypes cuDNN's fused convolution + bias + activation engine takes (not float64).
_CUDNN_FUSED = (torch.float32, torch.float16, torch.bfloat16)


class _ConvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int) -> Any:
        kind = x.device.type
        if torch.is_autocast_enabled(kind):  # as autocast runs conv2d: all three in its dtype
            low = torch.get_autocast_dtype(kind)
            x, weight, bias = x.to(low), weight.to(low), bias.to(low)
        with torch.autocast(kind, enabled=False):
            if x.is_cuda and x.dtype in _CUDNN_FUSED:
                out = torch.cudnn_convolution_relu(x, weight, bias, (1, 1), (padding, padding), (1, 1), 1)
            else:
                out = F.conv2d(x, weight, bias, padding=padding).relu_()
        ctx.save_for_backward(x, weight, out)
        ctx.padding = padding
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        x, weight, out = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(grad, out, 0)
        p = ctx.padding
        (gx, _, _) = torch.ops.aten.convolution_backward(
            g, x, weight, None, [1, 1], [p, p], [1, 1], False, [0, 0], 1, [True, False, False]
        )
        return gx, None, None, None


def conv_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, padding))`` for 3x3 stride-1 convolutions; ``(B, C, H, W)``."""
    return _ConvReLU.apply(x, weight, bias, padding)
