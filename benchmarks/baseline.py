"""A faithful, unoptimised FakET NST kept as the speed baseline.

It works as the published code does: one tilt at a time, a separate network
pass for the content image (to the content layer), for the style image and
for the image being optimised, loss modules summed in Python,
``torch.optim.Adam`` rebuilt per tilt, the loss read back to the host after
every step (the published progress callback) and the GPU cache emptied at
every scale. Its arithmetic is the method's, so its output matches
``faket.nst`` (benchmarks check that before timing).

The network is built as ``torchvision.models.vgg19(weights=...)`` builds it
(all 37 feature layers and the classifier, with PyTorch's default
initialisation, then ``load_state_dict``), then cut after the deepest layer
used and its first convolution swapped for a replicate-padded copy, as the
published code does. The command form loads the weight file whole
(``torch.load`` without mmap), as torchvision's loader does.
"""

from __future__ import annotations

import numpy as np
import torch

from torch import nn

from faket.nst import gram, match_tilt_stats, scaled_error, stack_range, to_unit
from faket.settings import NSTSettings
from faket.vgg import CONV_CHANNELS, CONV_INDICES, IMAGENET_MEAN, IMAGENET_STD, N_LAYERS, POOL_INDICES


class TorchvisionVGG19(nn.Module):
    """torchvision's VGG-19 module layout: features, avgpool, classifier (default init)."""

    def __init__(self) -> None:
        super().__init__()
        convs = dict(zip(CONV_INDICES, CONV_CHANNELS))
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(N_LAYERS):
            if i in convs:
                layers.append(nn.Conv2d(c_in, convs[i], 3, padding=1))
                c_in = convs[i]
            elif i in POOL_INDICES:
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000))


def published_features(state_dict: dict[str, torch.Tensor], last: int) -> nn.Sequential:
    """The published network: whole VGG-19 built and loaded, features cut after ``last``."""
    model = TorchvisionVGG19()
    model.load_state_dict(state_dict, strict=any(k.startswith("classifier.") for k in state_dict))
    features = model.features[:last + 1]
    first = features[0]
    padded = nn.Conv2d(3, first.out_channels, 3, padding=1, padding_mode="replicate")
    padded.load_state_dict(first.state_dict())
    features[0] = padded
    features.eval()
    features.requires_grad_(False)
    return features


class BaselineNST:
    def __init__(self, weights: dict[str, torch.Tensor], settings: NSTSettings = NSTSettings(),
                 device: str = "cpu") -> None:
        self.s = settings
        self.device = torch.device(device)
        self.content_layers = list(settings.content_layers)
        self.style_layers = list(settings.style_layers)
        total = sum(abs(w) for w in settings.content_layer_weights)
        self.content_weights = [w / total * settings.content_weight
                                for w in settings.content_layer_weights]
        total = sum(abs(w) for w in settings.style_layer_weights)
        self.style_weights = [w / total for w in settings.style_layer_weights]
        if settings.pooling != "max":
            raise ValueError("the baseline models the published settings (max pooling)")
        self.net = published_features(weights, max(self.content_layers + self.style_layers)).to(self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(-1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(-1, 1, 1)

    def _forward(self, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        feats = {}
        x = (x - self.mean) / self.std
        for i in range(max(layers) + 1):
            x = self.net[i](x)
            if i in layers:
                feats[i] = x
        return feats

    def _rgb(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(image[..., None], image.shape + (3,))))
        return x.permute(2, 0, 1)[None].contiguous().to(self.device)

    def stylize_tilt(self, content: np.ndarray, style: np.ndarray, init: np.ndarray) -> np.ndarray:
        s = self.s
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        content_t, style_t = self._rgb(content), self._rgb(style)
        image = self._rgb(init).clamp(0, 1)
        value = torch.zeros_like(image)
        decay = torch.tensor(s.avg_decay, device=self.device)
        accum = torch.tensor(1.0, device=self.device)
        accum *= decay
        value *= decay
        value += (1 - decay) * image
        image.requires_grad_()
        content_feats = self._forward(content_t, self.content_layers)
        style_feats = self._forward(style_t, self.style_layers)
        style_targets = {k: gram(style_feats[k]) for k in self.style_layers}
        opt = torch.optim.Adam([image], lr=s.step_size)
        for _ in range(s.initial_iterations):
            feats = self._forward(image, self.style_layers + self.content_layers)
            losses = [scaled_error(feats[k], content_feats[k]) * w
                      for k, w in zip(self.content_layers, self.content_weights)]
            losses += [scaled_error(gram(feats[k]), style_targets[k]) * w
                       for k, w in zip(self.style_layers, self.style_weights)]
            loss = sum(losses).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                image.clamp_(0, 1)
                accum *= decay
                value *= decay
                value += (1 - decay) * image
            loss.item()  # the published progress callback reads the loss every step
        out = (value / (1 - accum)).detach()[0].clamp(0, 1).mean(dim=0)
        return out.cpu().numpy()

    def stylize_stack(self, content: np.ndarray, style: np.ndarray, init: np.ndarray) -> np.ndarray:
        c = to_unit(content, *stack_range(content))
        st = to_unit(style, *stack_range(style))
        i = to_unit(init, *stack_range(init))
        out = np.stack([self.stylize_tilt(c[k], st[k], i[k]) for k in range(len(c))])
        return match_tilt_stats(out, style)


def main() -> None:
    """Command form, for whole-command timings: baseline.py CONTENT STYLE INIT OUT WEIGHTS."""
    import sys

    from faket.io import read_mrc, write_mrc
    from faket.weights import random_state_dict

    content, style, init, out, weights = sys.argv[1:6]
    state = (random_state_dict(0) if weights == "random"
             else torch.load(weights, map_location="cpu", weights_only=True))
    nst = BaselineNST(state)
    result = nst.stylize_stack(read_mrc(content), read_mrc(style), read_mrc(init))
    write_mrc(out, result)


if __name__ == "__main__":
    main()
