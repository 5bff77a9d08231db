"""Noise model: published curves, closed form, aggregation, NOISY/CONTENT/BASELINE."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faket.errors import FaketInputError
from faket.io import read_mrc
from faket.noise import (NoiseModel, aggregate, apply, apply_tilt, apply_tilt_modalities, r_sigma_from_snr, smooth,
                         standardise, tilt_noise, tilt_stats)


@pytest.fixture(scope="module")
def published(golden):
    return json.loads(golden["noise_curves_reference"].read_text())


@pytest.fixture(scope="module")
def pair(golden):
    return read_mrc(golden["init"]), read_mrc(golden["content"])


def test_r_is_pearson_and_close_to_published(published, pair):
    noisy, clean = pair
    st = tilt_stats(noisy, clean)
    pearson = [np.corrcoef(noisy[i].ravel().astype(np.float64), clean[i].ravel())[0, 1]
               for i in range(len(noisy))]
    np.testing.assert_allclose(st["r"], pearson, atol=1e-6)
    assert np.abs(st["r"] - np.array(published["per_tilt"]["rs"])).max() <= 0.006
    np.testing.assert_allclose(st["sigma"], np.sqrt(1 - st["r"] ** 2), atol=1e-9)
    np.testing.assert_allclose(st["mean"], published["per_tilt"]["noisy_μs"], rtol=1e-5)
    np.testing.assert_allclose(st["std"], published["per_tilt"]["noisy_σs"], rtol=1e-5)
    np.testing.assert_allclose(st["clean_std"], published["per_tilt"]["clean_σs"], rtol=1e-5)


def test_r_minimises_residual_std(pair):
    noisy, clean = pair
    z = lambda a: (a - a.mean()) / a.std()  # noqa: E731
    a, b = z(noisy[1].astype(np.float64)), z(clean[1].astype(np.float64))
    r = tilt_stats(noisy[1:2], clean[1:2])["r"][0]
    best = min(np.linspace(0, 1, 2001), key=lambda s: np.std(a - s * b))
    assert abs(best - r) <= 5e-4


def test_order2_aggregation_matches_published(published):
    per = {"r": published["per_tilt"]["rs"], "sigma": published["per_tilt"]["stds"],
           "mean": published["per_tilt"]["noisy_μs"], "std": published["per_tilt"]["noisy_σs"]}
    agg = aggregate([{k: np.array(v) for k, v in per.items()}], 2)
    names = {"r": "rs", "sigma": "stds", "mean": "noisy_μs", "std": "noisy_σs"}
    for k, pub in names.items():
        np.testing.assert_allclose(agg[k], published["aggregated_order2"][pub], atol=1e-9)


def test_smooth_orders():
    c = np.array([1.0, 4.0, 2.0, 8.0])
    assert np.array_equal(smooth(c, -1), c)
    np.testing.assert_allclose(smooth(c, 0), np.full(4, c.mean()))
    quad = 0.5 * np.arange(6) ** 2 - np.arange(6) + 3
    np.testing.assert_allclose(smooth(quad, 2), quad, atol=1e-9)
    with pytest.raises(FaketInputError):
        smooth(c, -2)


def test_several_references_are_averaged(pair):
    noisy, clean = pair
    m1 = NoiseModel.estimate([(noisy, clean)], order=-1)
    m2 = NoiseModel.estimate([(noisy, clean), (noisy * 2 + 1, clean)], order=-1)
    np.testing.assert_allclose(m2.curves["r"], m1.curves["r"], atol=1e-9)
    np.testing.assert_allclose(m2.curves["mean"], (m1.curves["mean"] + m1.curves["mean"] * 2 + 1) / 2)


def test_apply_sets_reference_stats_and_shares_draws(pair):
    noisy, clean = pair
    model = NoiseModel.estimate([(noisy, clean)], order=2)
    out = {m: apply(clean, model, seed=7, modality=m) for m in ("noisy", "content", "baseline")}
    for m, arr in out.items():
        curves = model.curves if m != "baseline" else model.baseline()
        flat = arr.reshape(len(arr), -1).astype(np.float64)
        np.testing.assert_allclose(flat.std(1), curves["std"], rtol=1e-4)
        np.testing.assert_allclose(flat.mean(1), curves["mean"], rtol=1e-5)
    # CONTENT = same draws with sigma x 0.25: much closer to the noiseless projections
    corr = lambda a: np.corrcoef(a[2].ravel(), clean[2].ravel())[0, 1]  # noqa: E731
    assert corr(out["content"]) > corr(out["noisy"]) + 0.2
    base = model.baseline()
    assert np.ptp(base["r"]) == 0 and np.ptp(base["std"]) == 0
    # the noise of a tilt depends only on (seed, tilt)
    assert np.array_equal(apply_tilt(clean[3], 3, model, 7), out["noisy"][3])
    # all modalities of a tilt at once (one draw, one standardised tilt): each as made alone
    together = apply_tilt_modalities(clean[3], 3, model, 7, ["content", "noisy", "baseline"], 0.25, base)
    assert list(together) == ["content", "noisy", "baseline"]
    for m, arr in together.items():
        assert np.array_equal(arr, out[m][3]), m
    assert not np.array_equal(tilt_noise(7, 3, (4, 4)), tilt_noise(7, 2, (4, 4)))
    assert not np.array_equal(apply(clean, model, seed=8)[0], out["noisy"][0])


def test_model_roundtrip_and_given(tmp_path, pair):
    noisy, clean = pair
    model = NoiseModel.estimate([(noisy, clean)], order=2)
    path = model.save(tmp_path / "noise.json")
    back = NoiseModel.load(path)
    for k in model.curves:
        np.testing.assert_allclose(back.curves[k], model.curves[k])
    np.testing.assert_allclose(back.baseline()["r"], model.baseline()["r"])
    r, s = r_sigma_from_snr(0.25)
    assert r ** 2 / s ** 2 == pytest.approx(0.25) and r ** 2 + s ** 2 == pytest.approx(1)
    given = NoiseModel.given(r, s, noisy, order=-1)
    np.testing.assert_allclose(given.curves["r"], r)
    np.testing.assert_allclose(given.curves["std"], noisy.reshape(5, -1).std(1), rtol=1e-5)


def test_bad_noise_inputs(tmp_path, pair):
    noisy, clean = pair
    with pytest.raises(FaketInputError, match="shape"):
        tilt_stats(noisy, clean[:4])
    with pytest.raises(FaketInputError, match="constant"):
        tilt_stats(np.ones_like(noisy), clean)
    bad = tmp_path / "bad.json"
    bad.write_text("{\"format\": \"other\"}")
    with pytest.raises(FaketInputError, match="not a valid"):
        NoiseModel.load(bad)
    model = NoiseModel.estimate([(noisy, clean)])
    with pytest.raises(FaketInputError, match="tilts"):
        apply(clean[:3], model, 0)
    with pytest.raises(FaketInputError):
        r_sigma_from_snr(0)


@pytest.mark.parametrize("shape, workers", [((3, 37, 41), 2), ((2, 512, 384), 2), ((9, 1100, 1000), 16)])
def test_statistics_are_numpys_formulas_bit_for_bit(shape, workers):
    """tilt_stats and standardise centre each tilt once (faket._pairwise.centred) and still give what
    the plain numpy formulas give, bit for bit: the same sums in the same order, also in the
    largest blocks (9 tilts on 16 threads: faket._pairwise.block_for)."""
    rng = np.random.default_rng(shape[1])
    ref = (rng.random(shape) * 100 + 3).astype(np.float32)
    clean = (ref * 0.5 + rng.normal(size=shape)).astype(np.float32)
    st = tilt_stats(ref, clean, workers=workers)
    for i in range(shape[0]):
        a, b = ref[i].astype(np.float64).ravel(), clean[i].astype(np.float64).ravel()
        za, zb = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
        r = np.mean(za * zb)
        want = {"r": r, "sigma": (za - r * zb).std(), "mean": a.mean(), "std": a.std(),
                "clean_mean": b.mean(), "clean_std": b.std()}
        assert {k: st[k][i] for k in want} == want, i
        image = ref[i].astype(np.float64)
        assert np.array_equal(standardise(ref[i]), (image - image.mean()) / image.std())
    assert not standardise(np.full((4, 4), 2.0, np.float32)).any()  # a constant tilt: zeros


def _plain_noisy(clean, noise, r, sigma, mean, std):
    """The noise step in plain numpy, one new array per operation (what faket.noise does in place)."""
    image = clean.astype(np.float64)
    z = (image - image.mean()) / image.std()
    x = z * r + noise.astype(np.float64) * sigma
    x = x / x.std() * std
    return (x - x.mean() + mean).astype(np.float32)


@pytest.mark.parametrize("threads", [1, 16])
def test_modalities_are_the_plain_formulas_bit_for_bit(pair, threads):
    """apply_tilt_modalities (one draw and one standardised tilt for all modalities, in place where
    it can) gives the plain formulas' values bit for bit, tilt after tilt of changing sizes, in
    the blocks for one thread and for 16 (faket._pairwise.block_for)."""
    noisy, clean = pair
    model = NoiseModel.estimate([(noisy, clean)], order=1)
    rng = np.random.default_rng(5)
    # the last two: many blocks of one thread's size, 3 of 16 threads' size
    for k, shape in enumerate([(64, 48), (96, 80), (32, 40), (300, 257), (1100, 1000)]):
        tilt = k % model.n_tilts
        image = (rng.random(shape) * 50 - 7).astype(np.float32)
        made = apply_tilt_modalities(image, tilt, model, 11, ["noisy", "content"], 0.25, threads=threads)
        noise = tilt_noise(11, tilt, shape)
        c = model.curves
        for m, factor in (("noisy", 1.0), ("content", 0.25)):
            want = _plain_noisy(image, noise, c["r"][tilt], c["sigma"][tilt] * factor,
                                c["mean"][tilt], c["std"][tilt])
            assert made[m].shape == shape and made[m].dtype == np.float32
            assert np.array_equal(made[m], want), (k, m)
