"""Weighted back-projection: against the phantom and scikit-image iradon."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import iradon

from faket.errors import FaketInputError
from faket.projection import project
from faket.reconstruction import (FILTERS, angle_weights, approx_shrec_filter, bin_tilts,
                                  ramp_filter, reconstruct, z_slices)
from faket.settings import PAPER_RECONSTRUCTION, ReconstructionSettings
from test_projection import _spheres

from conftest import DEVICES

N = 48


@pytest.fixture(scope="module")
def phantom():
    return _spheres(N, seed=3)


def _disc_mask(n):
    z, x = np.mgrid[:n, :n]
    return ((z - n // 2) ** 2 + (x - n // 2) ** 2 < (n // 2 - 2) ** 2)[:, None, :]


@pytest.mark.parametrize("device", DEVICES)
def test_full_range_matches_iradon_and_phantom(phantom, device):
    theta = np.linspace(-90, 90, 120, endpoint=False)
    p = -project(phantom, theta).numpy()
    rec = reconstruct(p, theta, device=device).cpu().numpy()
    ref = np.stack([iradon(p[:, j, :].T, theta=theta, filter_name="ramp", circle=True)
                    for j in range(N)], axis=1)
    m = np.broadcast_to(_disc_mask(N), rec.shape)
    assert np.abs(rec - ref)[m].max() < 1e-3 * np.abs(ref).max()
    assert np.corrcoef(rec[m], phantom[m])[0, 1] > 0.95


def test_limited_tilt_range_still_correlates(phantom):
    theta = np.linspace(-60, 60, 41)
    rec = reconstruct(-project(phantom, theta).numpy(), theta).numpy()
    m = np.broadcast_to(_disc_mask(N), rec.shape)
    assert np.corrcoef(rec[m], phantom[m])[0, 1] > 0.75


def test_angle_weights_reduce_to_iradon_for_a_half_turn():
    theta = np.deg2rad(np.linspace(-90, 90, 60, endpoint=False))
    np.testing.assert_allclose(angle_weights(theta), np.pi / (2 * 60))


def test_ramp_filter_shape_and_dc():
    f = ramp_filter(128)
    assert f.shape == (65,)
    assert 0 < float(f[0]) < 0.01                       # tiny but non-negative DC
    assert float(f[-1]) == pytest.approx(1.0, rel=0.05)  # ~|f|/0.5 at Nyquist (times 1)
    for name in ("shepp-logan", "cosine", "hann"):
        w = ramp_filter(128, name)
        assert (w <= f + 1e-12).all() and float(w[-1]) < float(f[-1])


def test_approx_shrec_filter():
    f = approx_shrec_filter(40, 48).numpy()
    assert f.shape == (40, 48) and f.max() == pytest.approx(1.0) and f.min() >= 0
    assert f[0, 0] == 0                                   # ramp is zero at DC


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", FILTERS)
def test_every_filter_reconstructs(phantom, name, device):
    theta = np.linspace(-60, 60, 21)
    rec = reconstruct(-project(phantom, theta).numpy(), theta,
                      ReconstructionSettings(filter=name), device=device).cpu().numpy()
    assert rec.shape == (N, N, N) and np.isfinite(rec).all()
    m = np.broadcast_to(_disc_mask(N), rec.shape)
    assert np.corrcoef(rec[m], phantom[m])[0, 1] > 0.4


def test_binning_and_z_crop(phantom):
    theta = np.linspace(-60, 60, 21)
    p = -project(phantom, theta).numpy()
    assert bin_tilts(p, 2, "mean").shape == (21, 24, 24)
    np.testing.assert_allclose(bin_tilts(p, 2, "mean")[0, 0, 0].item(), p[0, :2, :2].mean(), rtol=1e-5)
    assert tuple(bin_tilts(p, 2, "cubic").shape) == (21, 24, 24)
    rec = reconstruct(p, theta, PAPER_RECONSTRUCTION).numpy()
    lo, hi = PAPER_RECONSTRUCTION.z_range
    assert rec.shape == (int(np.ceil(hi * 24)) - int(np.floor(lo * 24)), 24, 24)
    assert rec.shape[0] == len(z_slices(24, (lo, hi)))       # what the CLI's progress bar counts
    thick = reconstruct(p, theta, ReconstructionSettings(thickness=20)).numpy()
    assert thick.shape == (20, N, N)


def test_bad_reconstruction_settings(phantom):
    theta = np.linspace(-60, 60, 5)
    p = np.zeros((5, 8, 8), np.float32)
    for bad in (dict(filter="gauss"), dict(z_range=(0.6, 0.4)), dict(binning=0)):
        with pytest.raises(FaketInputError):
            reconstruct(p, theta, ReconstructionSettings(**bad))
    with pytest.raises(FaketInputError, match="angles"):
        reconstruct(p, theta[:4])


@pytest.mark.parametrize("settings", [ReconstructionSettings(), PAPER_RECONSTRUCTION,
                                      ReconstructionSettings(binning=3, thickness=11, z_range=(0.1, 0.7)),
                                      ReconstructionSettings(binning=3, binning_method="cubic")])
def test_output_shape_is_known_before_reconstructing(phantom, settings):
    """The engine lays out its store from output_shape before any reconstruction runs."""
    from faket.reconstruction import output_shape

    p = np.zeros((5, N, N + 7), np.float32)
    got = reconstruct(p, np.linspace(-60, 60, 5), settings).shape
    assert tuple(got) == output_shape(p.shape, settings)


def test_settings_made_without_validation_are_still_refused():
    from faket.reconstruction import check_settings

    with pytest.raises(FaketInputError, match="z range must satisfy"):
        ReconstructionSettings(z_range=(0.7, 0.2))
    bypassed = ReconstructionSettings.model_construct(filter="rampp")
    with pytest.raises(FaketInputError, match="filter"):
        check_settings(bypassed)
    check_settings(ReconstructionSettings())


def test_a_degenerate_tilt_scheme_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from conftest import call_main
    from faket.io import write_mrc, write_tlt

    write_mrc(tmp_path / "t.mrc", np.random.default_rng(0).random((5, 16, 16), dtype=np.float32))
    write_tlt(tmp_path / "same.tlt", np.full(5, 12.5))
    code, _, err = call_main(monkeypatch, capsys, "reconstruct", tmp_path / "t.mrc", "--angles",
                             tmp_path / "same.tlt", "-o", tmp_path / "rec.mrc", "--device", "cpu")
    assert code == 2 and "all 5 tilts are at 12.5 degrees" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rec.mrc").exists()
