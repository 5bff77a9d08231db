"""NST: analytic pieces, golden fidelity, batching and options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import DEVICES, assert_golden
from faket.errors import FaketInputError
from faket.io import read_mrc
from faket.nst import (StyleTransfer, gen_scales, gram, match_tilt_stats, normalised_weights, nst_batches,
                       scaled_error, stack_range, stylize_stack, tile_cuts, to_unit, tv_loss)
from faket.settings import NSTSettings

GOLDEN_CASES = [("expected_iter1_step0.15", 1, 0.15), ("expected_iter3_step0.05", 3, 0.05)]


@pytest.fixture(scope="module")
def inputs(golden):
    return {k: read_mrc(golden[k]) for k in ("content", "style", "init")}


@pytest.mark.parametrize("device", DEVICES)
def test_gram_of_known_tensor(device):
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]], device=device)  # (1, 2, 2, 2)
    g = gram(f)
    expected = torch.tensor([[[30.0, 6.0], [6.0, 2.0]]]) / 4
    assert g.device.type == device and torch.equal(g.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_scaled_error_analytic(device):
    x = torch.tensor([[1.0, -2.0, 0.0]], device=device)
    t = torch.zeros(1, 3, device=device)
    # sum d^2 = 5, sum |d| = 3
    assert scaled_error(x, t).item() == pytest.approx(5 / (3 + 1e-8))
    assert scaled_error(t, t).item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_tv_loss_of_ramp(device):
    x = torch.arange(4.0, device=device).repeat(4, 1)[None, None]  # horizontal ramp of slope 1
    # replicate padding: the last column's x-difference is 0 -> 12 of 16 pixels have 1
    assert tv_loss(x).item() == pytest.approx(12 / 16)


def test_normalised_weights_and_zero_weights():
    assert normalised_weights([256, 64, 16, 4, 1], "style") == pytest.approx(
        [256 / 341, 64 / 341, 16 / 341, 4 / 341, 1 / 341])
    with pytest.raises(FaketInputError):
        normalised_weights([0, 0], "style")


def test_gen_scales_matches_sqrt2_pyramid():
    assert gen_scales(64, 64) == [64]
    assert gen_scales(32, 64) == [32, 45, 64]


def test_nst_batches_cover_the_tilts_in_order():
    assert nst_batches(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert nst_batches(4, 4) == [slice(0, 4)] and nst_batches(2, 8) == [slice(0, 2)]
    assert nst_batches(0, 2) == []


def test_to_unit_is_stack_minmax():
    a = np.array([[[2.0, 4.0]], [[6.0, 10.0]]], np.float32)
    u = to_unit(a, *stack_range(a))
    assert u.min() == 0 and u.max() == 1
    assert u[0, 0, 1] == np.float32(0.25)


def test_match_tilt_stats_sets_std_then_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8, 8)).astype(np.float32)
    ref = (rng.normal(size=(3, 8, 8)) * [[[2.0]], [[0.5]], [[3.0]]] + [[[1.0]], [[-4.0]], [[9.0]]])
    y = match_tilt_stats(x, ref.astype(np.float32))
    np.testing.assert_allclose(y.reshape(3, -1).std(1), ref.reshape(3, -1).std(1), rtol=1e-5)
    np.testing.assert_allclose(y.reshape(3, -1).mean(1), ref.reshape(3, -1).mean(1), atol=1e-5)


@pytest.mark.parametrize("name,iterations,step", GOLDEN_CASES)
def test_golden_fidelity(inputs, test_weights, golden, name, iterations, step):
    st = NSTSettings(iterations=iterations, initial_iterations=iterations, step_size=step)
    out = stylize_stack(inputs["content"], [inputs["style"]], inputs["init"],
                        StyleTransfer(test_weights, st, device="cpu"))
    expected = read_mrc(golden[name])
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert_golden(out, expected, step, iterations)


@pytest.mark.parametrize("device", DEVICES)
def test_batching_is_exact_in_float64(inputs, test_weights, device):
    """Every loss stays per tilt: in float64 (no amplified round-off) batches change nothing."""
    st1 = NSTSettings(initial_iterations=2, step_size=0.05, batch_size=1)
    st5 = NSTSettings(initial_iterations=2, step_size=0.05, batch_size=5)
    c, s, i = inputs["content"], inputs["style"], inputs["init"]
    a = stylize_stack(c, [s], i, StyleTransfer(test_weights, st1, dtype=torch.float64, device=device))
    b = stylize_stack(c, [s], i, StyleTransfer(test_weights, st5, dtype=torch.float64, device=device))
    assert np.abs(a - b).max() < 1e-5


def test_one_tilt_alone_equals_its_place_in_the_stack(inputs, test_weights):
    """A worker processing one tilt with the stack ranges gets the same tilt."""
    st = NSTSettings()
    c, s, i = inputs["content"], inputs["style"], inputs["init"]
    full = stylize_stack(c, [s], i, StyleTransfer(test_weights, st, device="cpu"))
    transfer = StyleTransfer(test_weights, st, device="cpu")
    res = transfer.stylize_batch(to_unit(c[2:3], *stack_range(c)), [to_unit(s[2:3], *stack_range(s))],
                                 to_unit(i[2:3], *stack_range(i)))
    one = match_tilt_stats(res.images.numpy(), s[2:3])
    assert np.array_equal(one[0], full[2])


def test_style_targets_computed_once_serve_other_contents_bit_for_bit(inputs, test_weights):
    """The engine computes a style tilt's Gram targets once for every tomogram sharing it."""
    transfer = StyleTransfer(test_weights, NSTSettings(), device="cpu")
    c, s, i = (to_unit(x[1:3], *stack_range(x)) for x in (inputs["content"], inputs["style"], inputs["init"]))
    targets = transfer.style_targets([s], c.shape[-2:])
    assert list(targets) == [64] and targets[64][29].shape == (2, 512, 512)
    for content, init in ((c, i), (c[:, ::-1].copy(), i[:, :, ::-1].copy())):
        own = transfer.stylize_batch(content, [s], init).images
        shared = transfer.stylize_batch(content, None, init, style_targets=targets).images
        assert torch.equal(own, shared)
    with pytest.raises(ValueError, match="scales"):
        transfer.stylize_batch(c[:, :48, :48], None, i[:, :48, :48], style_targets=targets)
    with pytest.raises(ValueError, match="batches of 2 tilts, the content has 1"):
        transfer.stylize_batch(c[:1], None, i[:1], style_targets=targets)


@pytest.mark.parametrize("option", ["channels_last", "compile"])
def test_execution_experiments_compute_the_same(inputs, test_weights, option):
    """NHWC activations and torch.compile change kernels, not arithmetic: equal in float64."""
    c, s, i = (to_unit(x[:2], *stack_range(x)) for x in (inputs["content"], inputs["style"], inputs["init"]))
    st = NSTSettings(initial_iterations=2, step_size=0.05)
    ref = StyleTransfer(test_weights, st, dtype=torch.float64, device="cpu").stylize_batch(c, [s], i).images
    got = StyleTransfer(test_weights, st, dtype=torch.float64, **{option: True}, device="cpu").stylize_batch(c, [s], i).images
    assert (got - ref).abs().max() < 1e-6


def test_zero_weight_style_stack_has_no_effect(inputs, test_weights):
    c, s, i = inputs["content"], inputs["style"], inputs["init"]
    other = np.ascontiguousarray(s[::-1])
    one = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(), device="cpu"))
    two = stylize_stack(c, [s, other], i, StyleTransfer(test_weights, NSTSettings(), device="cpu"),
                        style_image_weights=[1.0, 0.0])
    assert np.abs(one - two).max() <= 1e-6
    mixed = stylize_stack(c, [s, other], i, StyleTransfer(test_weights, NSTSettings(), device="cpu"),
                          style_image_weights=[1.0, 1.0])
    assert np.abs(one - mixed).max() > 1e-3


@pytest.mark.parametrize("pooling", ["average", "l2"])
def test_other_poolings_run_and_differ(inputs, test_weights, pooling):
    c, s, i = (inputs[k][:2] for k in ("content", "style", "init"))
    base = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(), device="cpu"))
    out = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(pooling=pooling), device="cpu"))
    assert np.isfinite(out).all() and np.abs(out - base).max() > 1e-4


def test_pyramid_and_inits(inputs, test_weights):
    c, s = inputs["content"][:2], inputs["style"][:2]
    st = NSTSettings(min_scale=32, end_scale=64, iterations=2, initial_iterations=2, init="gray")
    out = stylize_stack(c, [s], None, StyleTransfer(test_weights, st, device="cpu"))
    assert out.shape == c.shape and np.isfinite(out).all()
    # gray/uniform starts are seeded: same seed, same result; another seed, another result
    for init in ("gray", "uniform"):
        a = stylize_stack(c, [s], None, StyleTransfer(test_weights, NSTSettings(init=init, seed=1), device="cpu"))
        b = stylize_stack(c, [s], None, StyleTransfer(test_weights, NSTSettings(init=init, seed=1), device="cpu"))
        d = stylize_stack(c, [s], None, StyleTransfer(test_weights, NSTSettings(init=init, seed=2), device="cpu"))
        assert np.array_equal(a, b) and not np.array_equal(a, d)


def test_tv_weight_changes_result(inputs, test_weights):
    c, s, i = (inputs[k][:1] for k in ("content", "style", "init"))
    a = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(), device="cpu"))
    b = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(tv_weight=1e3), device="cpu"))
    assert np.abs(a - b).max() > 1e-4


@pytest.mark.parametrize("bad", [
    dict(step_size=0), dict(step_size=-1), dict(iterations=0), dict(initial_iterations=0),
    dict(style_layers=(1, 99), style_layer_weights=(1, 1)), dict(content_layers=(-1,)),
    dict(pooling="median"), dict(batch_size=0), dict(avg_decay=1.0),
    dict(style_layer_weights=(1, 2)),
])
def test_bad_settings_are_refused(test_weights, bad):
    with pytest.raises(FaketInputError):
        StyleTransfer(test_weights, NSTSettings(**bad), device="cpu")


def test_too_small_images_are_refused(test_weights):
    t = StyleTransfer(test_weights, NSTSettings(), device="cpu")
    x = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(FaketInputError, match="at least"):
        t.stylize_batch(x, [x], x)


def test_adam_matches_torch_optim_adam_bit_for_bit():
    from faket.nst import Adam

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 8, 8, generator=gen)
    b = a.clone().requires_grad_()
    ours, ref = Adam(a, 0.15), torch.optim.Adam([b], lr=0.15)
    for _ in range(4):
        g = torch.randn(2, 3, 8, 8, generator=gen) * 1e-6
        ours.step(g)
        b.grad = g.clone()
        ref.step()
    assert torch.equal(a, b.detach())


# --------------------------------------------------------------------------- exact tiling
SHALLOW = dict(content_layers=(8,), style_layers=(1, 6), style_layer_weights=(1.0, 1.0))


def _random_stacks(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((n, h, w)).astype(np.float32) for _ in range(3)]


@pytest.mark.parametrize("device", DEVICES)
def test_tiling_is_exact_in_float64(test_weights, device):
    """Halo >= receptive field, aligned tiles, global sums first: the tiled step is the untiled one."""
    c, s, i = _random_stacks(2, 96, 80)
    base = dict(initial_iterations=3, step_size=0.05, **SHALLOW)
    a = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(**base), dtype=torch.float64,
                                               device=device))
    t = StyleTransfer(test_weights, NSTSettings(tile_size=16, **base), dtype=torch.float64, device=device)
    assert len(t._tiles(96, 80, 2)) == 30                  # really tiled, halos overlapping
    b = stylize_stack(c, [s], i, t)
    assert np.abs(a - b).max() < 1e-6


def test_tiling_with_published_layers_and_tv_in_float64(test_weights):
    c, s, i = _random_stacks(1, 128, 112, seed=1)
    a = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(tv_weight=0.5),
                                               dtype=torch.float64, device="cpu"))
    b = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(tv_weight=0.5, tile_size=64),
                                               dtype=torch.float64, device="cpu"))
    assert np.abs(a - b).max() < 1e-6


def test_tiling_in_float32_differs_by_round_off_only(test_weights):
    """float32: summation order differs; the near-sign Adam step amplifies it on a few pixels."""
    c, s, i = _random_stacks(2, 96, 80, seed=2)
    a = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(**SHALLOW), device="cpu"))
    b = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(tile_size=16, **SHALLOW), device="cpu"))
    d = np.abs(a - b)
    assert (d <= 1e-4).mean() >= 0.999 and (d <= 1e-5).mean() >= 0.99 and d.max() <= 1e-2


def test_memory_budget_picks_tiles(test_weights):
    t = StyleTransfer(test_weights, NSTSettings(memory_budget_gb=64), device="cpu")
    assert t._tiles(512, 512, 1) is None                    # fits whole
    t = StyleTransfer(test_weights, NSTSettings(memory_budget_gb=0.5), device="cpu")
    tiles = t._tiles(1024, 1024, 1)
    assert tiles is not None and all((y1 - y0) % 16 == 0 for (y0, y1, _, _), _ in tiles)
    # automatic tiles line up with the store's 1024^2 chunks: every chunk edge is a tile edge
    for h, w, budget in ((4096, 4096, 2.0), (4092, 5760, 8.0), (2048, 3000, 0.5)):
        tiles = StyleTransfer(test_weights, NSTSettings(memory_budget_gb=budget), device="cpu")._tiles(h, w, 1)
        starts = {y0 for (y0, _, _, _), _ in tiles} | {x0 for (_, _, x0, _), _ in tiles}
        assert len(tiles) > 1 and set(range(0, max(h, w), 1024)) <= starts, (h, w, budget)
    with pytest.raises(FaketInputError, match="below what one 64x64 tile"):   # before any work
        StyleTransfer(test_weights, NSTSettings(memory_budget_gb=0.01), device="cpu")


@pytest.mark.parametrize("n,tile", [(100, 16), (1024, 480), (1500, 480), (4092, 700), (5760, 1000),
                                    (5760, 2500), (4096, 1024), (300, 64)])
def test_tile_cuts_line_up_with_store_chunks(n, tile):
    cuts = tile_cuts(n, tile)
    assert cuts[0] == 0 and cuts[-1] == n and cuts == sorted(set(cuts))
    if tile < 1024:
        assert set(range(0, n, 1024)) <= set(cuts)          # every chunk edge is a tile edge
    else:
        assert all(c % 1024 == 0 for c in cuts[:-1])        # tiles made of whole chunks
    assert all(c % 16 == 0 for c in cuts[:-1])              # pooling alignment
    sizes = np.diff(cuts)
    assert sizes.max() <= max(tile // 16 * 16, 16) or (tile >= 1024 and sizes.max() <= tile)
    if tile < 1024 and n >= 1024:                           # equal parts within a whole chunk
        first = [d for c, d in zip(cuts, sizes) if c < 1024]
        assert max(first) - min(first) <= 16


def test_precision_modes(inputs, test_weights):
    c, s, i = inputs["content"], inputs["style"], inputs["init"]
    ref = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(), device="cpu"))
    # tf32 only switches GPU kernels: on the CPU it is float32 exactly
    tf32 = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(precision="tf32"), device="cpu"))
    assert np.array_equal(tf32, ref)
    # bf16 is emulated (slowly) on CPUs without it: one tilt is enough
    bf16 = stylize_stack(c[:1], [s[:1]], i[:1], StyleTransfer(test_weights, NSTSettings(precision="bf16"), device="cpu"))
    d = np.abs(bf16 - ref[:1])
    assert np.isfinite(bf16).all() and 0 < d.max() and d.mean() < 0.2 * ref.std()
    with pytest.raises(FaketInputError, match="precision"):
        StyleTransfer(test_weights, NSTSettings(precision="fp8"), device="cpu")
