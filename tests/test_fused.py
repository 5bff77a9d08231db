"""faket._fused.conv_relu and VGGFeatures(fuse_conv_relu): on the CPU, bit for bit the unfused layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from faket._fused import conv_relu
from faket.nst import StyleTransfer
from faket.settings import NSTSettings
from faket.vgg import VGGFeatures


@pytest.mark.parametrize("padding", [0, 1])
def test_conv_relu_forward_and_input_gradient_equal_the_unfused_layers(padding):
    gen = torch.Generator().manual_seed(padding)
    x = torch.randn(2, 5, 17, 13, generator=gen)
    w, b = torch.randn(7, 5, 3, 3, generator=gen), torch.randn(7, generator=gen)
    g = torch.randn(2, 7, 17 - 2 + 2 * padding, 13 - 2 + 2 * padding, generator=gen)
    outs, grads = [], []
    for fused in (False, True):
        xi = x.clone().requires_grad_()
        out = conv_relu(xi, w, b, padding) if fused else F.relu(F.conv2d(xi, w, b, padding=padding))
        (gx,) = torch.autograd.grad(out, xi, g)
        outs.append(out.detach())
        grads.append(gx)
    assert torch.equal(outs[0], outs[1]) and (outs[0] == 0).any()  # some units are off
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-autocast"])
def test_vgg_features_and_their_gradient_are_unchanged_by_fusing(test_weights, bf16):
    s = NSTSettings()
    layers = list(s.content_layers) + list(s.style_layers)
    x = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(3))
    got = []
    for fused in (False, True):
        net = VGGFeatures(test_weights, layers)
        net.fuse_conv_relu = fused
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            feats = net(xi, layers)
        if bf16:  # autocast ran the convolutions in bfloat16, fused or not
            assert all(f.dtype == torch.bfloat16 for f in feats.values())
        loss = sum(f.float().square().mean() for f in feats.values())
        (gx,) = torch.autograd.grad(loss, xi)
        got.append(({k: v.detach() for k, v in feats.items()}, gx))
    assert got[0][0].keys() == got[1][0].keys() == set(layers)
    for k in layers:
        assert torch.equal(got[0][0][k], got[1][0][k]), k
    assert torch.equal(got[0][1], got[1][1])


def test_the_fused_step_is_asked_for_or_off_on_the_cpu(test_weights):
    assert StyleTransfer(test_weights, fuse_conv_relu=True).net.fuse_conv_relu
    assert StyleTransfer(test_weights, NSTSettings(precision="bf16"), fuse_conv_relu=True).net.fuse_conv_relu
    assert not StyleTransfer(test_weights).net.fuse_conv_relu  # off by default on the CPU


def test_fused_by_default_only_on_cuda(monkeypatch):
    from faket.nst import fuse_default
    from faket.reproducible import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert fuse_default("cuda") and fuse_default("cuda:1")  # in every precision mode
    assert not fuse_default("cpu")
    monkeypatch.setenv(ENV_VAR, "1")  # strict float32 keeps PyTorch's own layers
    assert not fuse_default("cuda")


# (autocast dtype, forward rtol / atol, gradient: relative threshold, share of units beyond it)
GPU_CASES = {"float32": (None, 1e-5, 1e-4, 1e-3, 1e-3), "bf16-autocast": (torch.bfloat16, 2e-2, 0.1, 2e-2, 1e-2)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_cudnn_fused_step_matches_the_unfused_layers(monkeypatch, case):
    """cuDNN's fused forward against conv2d + ReLU, TF32 off: float32 round-off apart; under
    bfloat16 autocast both run in bfloat16, bfloat16 round-off apart (one rounding fewer fused).
    A unit at 0 may flip on round-off: a few input gradients differ."""
    low, rtol, atol, rel, share = GPU_CASES[case]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    gen = torch.Generator().manual_seed(9 if low is None else 10)
    x, w, b = (
        torch.randn(2, 16, 64, 48, generator=gen),
        torch.randn(32, 16, 3, 3, generator=gen),
        torch.randn(32),
    )
    x, w, b = x.cuda().requires_grad_(), w.cuda(), b.cuda()
    with torch.autocast("cuda", dtype=low or torch.float32, enabled=low is not None):
        ref = F.relu(F.conv2d(x, w, b, padding=1))
        out = conv_relu(x, w, b, 1)
    assert out.dtype == ref.dtype == (low or torch.float32)
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=atol)
    g = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad(ref, x, g)
    (g_out,) = torch.autograd.grad(out, x, g)
    assert g_out.dtype == x.dtype  # the input's gradient comes back in the input's dtype
    off = (g_out - g_ref).abs() > rel * g_ref.abs().max()
    assert off.float().mean() < share
