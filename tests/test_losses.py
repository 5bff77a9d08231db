"""The losses' hand-written gradients equal autograd's, in every memory layout (#12)."""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES
from faket.losses import SCALED_ERROR_EPS, gram, scaled_error


def _reference_gram(f: torch.Tensor) -> torch.Tensor:
    m = f.flatten(-2)
    return m @ m.transpose(-2, -1) / m.shape[-1]


def _reference_scaled_error(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    d = x - t
    return d.pow(2).flatten(1).sum(1) / d.abs().flatten(1).sum(1).add(SCALED_ERROR_EPS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_gram_and_its_gradient_equal_autograd(device, channels_last):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 5, 7, 6, generator=g, dtype=torch.float64).to(device)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    w = torch.randn(2, 5, 5, generator=g, dtype=torch.float64).to(device)
    a = f.clone().requires_grad_()
    b = f.clone().requires_grad_()
    ga, gb = gram(a), _reference_gram(b)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)
    (da,) = torch.autograd.grad((ga * w).sum(), a)
    (db,) = torch.autograd.grad((gb * w).sum(), b)
    torch.testing.assert_close(da, db, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: gram(x), (f.clone().requires_grad_(),))


@pytest.mark.parametrize("device", DEVICES)
def test_scaled_error_gradient_equals_autograd_bit_for_bit_in_float32(device):
    """The same arithmetic in the same order: the golden fixtures depend on it (first Adam step)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 9, 8, generator=g).to(device)
    t = torch.randn(3, 4, 9, 8, generator=g).to(device)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    la, lb = scaled_error(a, t), _reference_scaled_error(b, t)
    assert torch.equal(la, lb)
    w = torch.tensor([0.5, -2.0, 3.0], device=device)
    (da,) = torch.autograd.grad((la * w).sum(), a)
    (db,) = torch.autograd.grad((lb * w).sum(), b)
    assert torch.equal(da, db) if device == "cpu" else torch.allclose(da, db, rtol=1e-6, atol=1e-9)


def test_scaled_error_with_a_target_that_takes_gradients_falls_back_to_autograd():
    x = torch.randn(2, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(scaled_error, (x, t))
