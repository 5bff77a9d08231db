"""Projection: analytic cases and scikit-image radon per Y slice."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import radon

from faket.errors import FaketInputError
from faket.projection import project
from faket.settings import ProjectionSettings

from conftest import DEVICES


def _spheres(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32)
    vol = np.zeros((n, n, n), np.float32)
    for _ in range(8):
        c = rng.uniform(0.3, 0.7, 3) * n
        r = rng.uniform(0.04, 0.1) * n
        vol += ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r) * rng.uniform(0.5, 1.5)
    return vol


@pytest.mark.parametrize("device", DEVICES)
def test_matches_skimage_radon_per_y_slice(device):
    n = 48
    vol = _spheres(n)
    theta = np.linspace(-60, 60, 21)
    ours = -project(vol, theta, device=device).cpu().numpy()
    ref = np.moveaxis(np.stack([radon(vol[:, j, :], theta=theta, circle=True)
                                for j in range(n)]), -1, 0)
    assert ours.shape == ref.shape == (21, n, n)
    assert np.abs(ours - ref).max() < 1e-4 * ref.max()


@pytest.mark.parametrize("device", DEVICES)
def test_point_projects_to_its_rotated_position(device):
    """A small Gaussian blob (a 'point' that sampling can resolve) off the centre."""
    n = 33
    dz, dx = 4.0, 6.0                                 # offsets from the centre (16, 16)
    z, x = np.mgrid[:n, :n].astype(np.float64)
    blob = np.exp(-((z - 16 - dz) ** 2 + (x - 16 - dx) ** 2) / (2 * 1.2 ** 2))
    vol = np.zeros((n, n, n), np.float32)
    vol[:, 10, :] = blob
    theta = np.array([-50.0, -20.0, 0.0, 30.0, 60.0])
    p = -project(vol, theta, device=device).cpu().numpy()
    for k, th in enumerate(np.deg2rad(theta)):
        row = p[k, 10]
        assert row.sum() == pytest.approx(blob.sum(), rel=5e-3)       # mass is conserved
        centroid = (row * (np.arange(n) - n // 2)).sum() / row.sum()
        assert centroid == pytest.approx(dx * np.cos(th) - dz * np.sin(th), abs=0.02)
        assert np.abs(p[k, :10]).max() == 0 and np.abs(p[k, 11:]).max() == 0


def test_slab_thickness_grows_as_one_over_cosine():
    n = 64
    vol = np.zeros((n, n, n), np.float32)
    vol[28:36] = 1.0                                 # slab 8 voxels thick in Z
    theta = np.array([0.0, 30.0, 45.0, 60.0])
    p = -project(vol, theta).numpy()
    centre = p[:, :, n // 2 - 4:n // 2 + 4].mean(axis=(1, 2))
    np.testing.assert_allclose(centre, 8 / np.cos(np.deg2rad(theta)), rtol=1e-2)


def test_dose_and_detector_width():
    vol = _spheres(32)
    theta = np.array([0.0, 20.0])
    base = project(vol, theta).numpy()
    shifted = project(vol, theta, ProjectionSettings(dose=5.0)).numpy()
    np.testing.assert_allclose(shifted, base + 5.0, atol=1e-5)
    wide = project(vol, theta, ProjectionSettings(detector_width=48)).numpy()
    assert wide.shape == (2, 32, 48)
    np.testing.assert_allclose(wide[:, :, 8:40], base, atol=1e-4)


def test_non_cubic_volume_and_bad_shape():
    vol = np.ones((10, 20, 30), np.float32)
    p = project(vol, np.array([0.0]))
    assert p.shape == (1, 20, 30)
    assert float(-p[0, 5, 15]) == pytest.approx(10.0, abs=1e-4)
    with pytest.raises(FaketInputError):
        project(np.ones((4, 4), np.float32), np.array([0.0]))
