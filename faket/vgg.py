"""VGG-19 ``features`` stack in torchvision's layout, as the NST uses it.

Layer indices are those of ``torchvision.models.vgg19().features`` (0..36):
convolutions at 0, 2, 5, 7, ..., each followed by a ReLU, and 2x2 max pools at
4, 9, 18, 27, 36. A layer's output is taken after that layer, so 1, 6, 11, 20,
29 are relu1_1 .. relu5_1 and 8 is relu2_2. Weights are torchvision state
dicts (``features.<i>.weight`` / ``features.<i>.bias``), checked before use.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ._fused import conv_relu
from .errors import FaketInputError

CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
CONV_CHANNELS: tuple[int, ...] = (
    64,
    64,
    128,
    128,
    256,
    256,
    256,
    256,
    512,
    512,
    512,
    512,
    512,
    512,
    512,
    512,
)
POOL_INDICES: tuple[int, ...] = (4, 9, 18, 27, 36)
N_LAYERS = 37
LAYER_NAMES: dict[int, str] = {}
_block, _conv = 1, 1
for _i in range(N_LAYERS):
    if _i in POOL_INDICES:
        LAYER_NAMES[_i] = f"pool{_block}"
        _block, _conv = _block + 1, 1
    elif _i in CONV_INDICES:
        LAYER_NAMES[_i] = f"conv{_block}_{_conv}"
    else:
        LAYER_NAMES[_i] = f"relu{_block}_{_conv}"
        _conv += 1

#: ImageNet statistics the torchvision VGG-19 expects after scaling to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Pooling options and the factor that keeps activations at max-pool scale.
POOLING_SCALES = {"max": 1.0, "average": 2.0, "l2": 0.78}


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """State-dict keys of the ``features`` stack and their tensor shapes."""
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 3
    for idx, c_out in zip(CONV_INDICES, CONV_CHANNELS):
        shapes[f"features.{idx}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"features.{idx}.bias"] = (c_out,)
        c_in = c_out
    return shapes


def validate_state_dict(state: Mapping[str, object], source: str) -> dict[str, torch.Tensor]:
    """Check a VGG-19 state dict (keys, shapes, dtype, finiteness) and return its features part.

    Keys of torchvision's classifier (``classifier.*``) are allowed and dropped;
    any other unknown key, a missing key, a wrong shape or a non-float tensor
    raises FaketInputError naming ``source``. Returns float32 CPU tensors.
    """
    if not isinstance(state, Mapping):
        raise FaketInputError(
            f"weights {source} is not a state dict (got {type(state).__name__}):"
            " give a torchvision VGG-19 state dict file"
        )
    shapes = expected_shapes()
    missing = [k for k in shapes if k not in state]
    if missing:
        raise FaketInputError(
            f"weights {source} lacks {len(missing)} VGG-19 keys (first: "
            f"{missing[0]}): give a torchvision VGG-19 state dict"
        )
    unknown = [k for k in state if k not in shapes and not str(k).startswith("classifier.")]
    if unknown:
        raise FaketInputError(
            f"weights {source} has unexpected key {unknown[0]!r}: give a torchvision VGG-19 state dict"
        )
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        t = state[key]
        if not isinstance(t, torch.Tensor):
            raise FaketInputError(f"weights {source}: {key} is not a tensor")
        if tuple(t.shape) != shape:
            raise FaketInputError(
                f"weights {source}: {key} has shape {tuple(t.shape)}, "
                f"expected {shape}: give VGG-19 (not another network)"
            )
        if not t.is_floating_point():
            raise FaketInputError(f"weights {source}: {key} has dtype {t.dtype}, expected float")
        if not torch.isfinite(t).all():
            raise FaketInputError(f"weights {source}: {key} contains NaN or Inf")
        out[key] = t.detach().to("cpu", torch.float32).contiguous()
    return out


def check_layers(layers: Iterable[int], what: str) -> list[int]:
    """Validate layer indices of the features stack (0..36)."""
    layers = list(layers)
    if not layers:
        raise FaketInputError(f"no {what} layers given: give at least one index in 0..36")
    bad = [i for i in layers if not 0 <= int(i) < N_LAYERS]
    if bad:
        raise FaketInputError(
            f"unknown {what} layer index {bad[0]}: VGG-19 features has "
            f"layers 0..{N_LAYERS - 1} (e.g. 1, 6, 11, 20, 29 = relu1_1..relu5_1)"
        )
    return [int(i) for i in layers]


def min_input_size(last_layer: int) -> int:
    """Smallest image side that still has one pixel after the pools up to ``last_layer``."""
    return 2 ** sum(1 for p in POOL_INDICES if p <= last_layer)


def receptive_field(last_layer: int) -> int:
    """Receptive field (pixels) of one feature of layer ``last_layer``: 3x3 convs, 2x2 pools."""
    size, jump = 1, 1
    for i in range(last_layer + 1):
        if i in CONV_INDICES:
            size += 2 * jump
        elif i in POOL_INDICES:
            size += jump
            jump *= 2
    return size


def tile_halo(last_layer: int) -> int:
    """Context to add around a tile so that its inner features equal the whole image's.

    With total stride J (the pooling alignment) and receptive field R, the
    features of an aligned pixel range [a, b) see the input [a - L, b + L)
    with L = (R - J) / 2; L rounded up to J keeps pooling windows aligned.
    relu5_1: R = 156, J = 16, L = 70 -> 80 pixels.
    """
    align = min_input_size(last_layer)
    need = (receptive_field(last_layer) - align) // 2
    return int(-(-need // align) * align)


def activation_floats_per_pixel(last_layer: int) -> float:
    """Floats kept per input pixel (batch 1) for a forward and backward pass to ``last_layer``.

    Counts each layer's output (channels / downsampling^2) twice (value and
    gradient): an estimate for choosing tile sizes under a memory budget.
    """
    channels, down, total = 3, 1, 3.0
    conv_channels = dict(zip(CONV_INDICES, CONV_CHANNELS))
    for i in range(last_layer + 1):
        if i in conv_channels:
            channels = conv_channels[i]
        elif i in POOL_INDICES:
            down *= 4
        total += channels / down
    return 2 * total


class _Conv3x3(nn.Conv2d):
    """A 3x3 convolution whose parameters are left uninitialised: they are loaded next.

    (``nn.utils.skip_init`` would do the same through the meta device, whose
    first use imports torch's symbolic-shape machinery: ~0.5 s per process.)
    """

    def reset_parameters(self) -> None:
        pass


class _EdgeConv3x3(_Conv3x3):
    """The first convolution: pads by replicating the edge pixels, then convolves.

    The padding is written as concatenations of the edge rows and columns:
    the same values as ``padding_mode="replicate"`` (bit for bit), and it
    compiles with ``torch.compile``, whose replication-pad backward fails here.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, padding=0)

    @staticmethod
    def pad(x: torch.Tensor) -> torch.Tensor:
        """``x`` with its edge rows and columns repeated once (replicate padding by 1)."""
        x = torch.cat([x[..., :1, :], x, x[..., -1:, :]], dim=-2)
        return torch.cat([x[..., :1], x, x[..., -1:]], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.weight, self.bias)


class Scale(nn.Module):
    """Multiply a module's output by a constant (float32 buffer)."""

    def __init__(self, module: nn.Module, scale: float) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.scale


class VGGFeatures(nn.Module):
    """VGG-19 ``features`` truncated after the deepest layer used, ready for NST.

    The first convolution pads by replication (fewer edge artefacts), pooling
    is max (or average x 2.0, or L2 x 0.78), the network is in eval mode and
    its parameters take no gradients. Input: ``(B, 3, H, W)`` in [0, 1];
    it is normalised with the ImageNet statistics inside :meth:`forward`.
    """

    def __init__(
        self, state_dict: Mapping[str, torch.Tensor], layers: Iterable[int], pooling: str = "max"
    ) -> None:
        super().__init__()
        layers = check_layers(layers, "network")
        if pooling not in POOLING_SCALES:
            raise FaketInputError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLING_SCALES)}")
        self.last = max(layers)
        taken = set(layers)
        mods: list[nn.Module] = []
        c_in = 3
        conv_channels = dict(zip(CONV_INDICES, CONV_CHANNELS))
        for i in range(self.last + 1):
            if i in conv_channels:
                c_out = conv_channels[i]
                conv = _EdgeConv3x3(c_in, c_out) if i == 0 else _Conv3x3(c_in, c_out, 3, padding=1)
                with torch.no_grad():
                    conv.weight.copy_(state_dict[f"features.{i}.weight"])
                    conv.bias.copy_(state_dict[f"features.{i}.bias"])  # type: ignore[union-attr]
                mods.append(conv)
                c_in = c_out
            elif i in POOL_INDICES:
                if pooling == "max":
                    mods.append(nn.MaxPool2d(2, 2))
                elif pooling == "average":
                    mods.append(Scale(nn.AvgPool2d(2), POOLING_SCALES["average"]))
                else:
                    mods.append(Scale(nn.LPPool2d(2, 2), POOLING_SCALES["l2"]))
            else:
                # In place unless the convolution output before it is a taken feature.
                mods.append(nn.ReLU(inplace=(i - 1) not in taken))
        self.body = nn.Sequential(*mods)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(-1, 1, 1))
        #: Convolution, bias and ReLU in one step where the convolution's own output is not
        #: taken (faket._fused; an execution experiment, off by default).
        self.fuse_conv_relu = False
        self.eval()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, layers: Iterable[int]) -> dict[int, torch.Tensor]:
        """Features of ``x`` ``(B, 3, H, W)`` at ``layers``: ``{index: (B, C, h, w)}``."""
        wanted = set(layers)
        stop = max(wanted)
        if stop > self.last:
            raise ValueError(f"layer {stop} is beyond this network's last layer {self.last}")
        h, w = x.shape[-2:]
        need = min_input_size(stop)
        if min(h, w) < need:
            raise FaketInputError(f"image is {h}x{w} but layer {stop} needs at least {need}x{need}")
        feats: dict[int, torch.Tensor] = {}
        x = (x - self.mean) / self.std  # type: ignore[operator]  # registered buffers
        i = 0
        while i <= stop:
            layer = self.body[i]
            if self.fuse_conv_relu and isinstance(layer, _Conv3x3) and i not in wanted and i < stop:
                assert layer.bias is not None  # VGG's convolutions all have one
                edge = isinstance(layer, _EdgeConv3x3)  # the ReLU at i + 1 comes in the same step
                x = conv_relu(_EdgeConv3x3.pad(x) if edge else x, layer.weight, layer.bias, 0 if edge else 1)
                i += 1
            else:
                x = layer(x)
            if i in wanted:
                feats[i] = x
            i += 1
        return feats
