"""The NST's optimiser: Adam on one image tensor and the moving average of the iterates."""

from __future__ import annotations

import torch

from ._pyramid import _interp


class _EMA:
    """Bias-corrected exponential moving average of the iterates (float32, as published)."""

    def __init__(self, x: torch.Tensor, decay: float) -> None:
        self.value = torch.zeros_like(x)
        self.decay = torch.tensor(decay, device=x.device)
        self.accum = torch.tensor(1.0, device=x.device)
        self.update(x)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        self.accum *= self.decay
        self.value *= self.decay
        self.value += (1 - self.decay) * x

    def get(self) -> torch.Tensor:
        return self.value / (1 - self.accum)


class Adam:
    """Adam on one image tensor, with exactly the arithmetic of ``torch.optim.Adam``.

    (Its single-tensor path: no weight decay, no amsgrad.) Written out because
    constructing ``torch.optim.Adam`` imports torch's compiler stack, which
    costs seconds of start-up per process. Moments can be resized for the
    next scale of the pyramid (first moment bicubic, second bilinear, >= 0).
    """

    def __init__(
        self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.steps = 0

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** float(self.steps)
        bias_correction2 = 1 - beta2 ** float(self.steps)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-(self.lr / bias_correction1))

    def moved_to(self, param: torch.Tensor) -> Adam:
        """A copy of this optimiser's state for ``param`` at another size (warm start)."""
        new = Adam(param, self.lr, self.betas, self.eps)
        size = (int(param.shape[-2]), int(param.shape[-1]))
        new.exp_avg = _interp(self.exp_avg, size, "bicubic").contiguous()
        new.exp_avg_sq = _interp(self.exp_avg_sq, size, "bilinear").relu().contiguous()
        new.steps = self.steps
        return new
