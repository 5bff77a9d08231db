"""Phantom: labelled specimen and physics-lite reference."""

from __future__ import annotations

import numpy as np
import pytest

from faket.io import angles_range
from faket.phantom import (CLASSES, MEMBRANE_LABEL, ctf_2d, electron_wavelength, make_phantom,
                           reference_tilt_series)
from faket.settings import PhantomSettings


@pytest.fixture(scope="module")
def small():
    st = PhantomSettings(size=64, n_particles=12, seed=4)
    return st, make_phantom(st)


def test_phantom_is_seeded_and_labelled(small):
    st, ph = small
    again = make_phantom(st)
    assert np.array_equal(ph.density, again.density) and ph.particles == again.particles
    assert not np.array_equal(make_phantom(PhantomSettings(size=64, n_particles=12, seed=5)).density,
                              ph.density)
    present = set(np.unique(ph.labels)) - {0}
    assert present == set(CLASSES) | {MEMBRANE_LABEL}
    assert len(ph.particles) == 12
    for p in ph.particles:
        if p["class_name"] in ("sphere", "rod"):              # solid at the centre
            z, y, x = (int(round(p[k])) for k in ("z", "y", "x"))
            assert ph.labels[z, y, x] == p["class_id"]
    # density lives where the labels are
    assert ph.density[ph.labels == 0].max() == 0
    assert ph.density[ph.labels == 1].min() > 0


def test_reference_looks_like_micrographs(small):
    st, ph = small
    theta = angles_range(-60, 60, 20)
    ref = reference_tilt_series(ph, theta, st)
    assert ref.shape == (7, 64, 64) and ref.dtype == np.float32
    means = ref.reshape(7, -1).mean(1)
    # dose per pixel ~ dose * pixel^2 = 200; attenuation darkens high tilts
    assert 100 < means[3] < 250 and means[0] < means[3] and means[-1] < means[3]
    # shot noise: variance of the counts is at least their mean (Poisson)
    assert ref[3].var() >= 0.8 * means[3]


def test_wavelength_and_ctf():
    assert electron_wavelength(300) == pytest.approx(0.01969, rel=1e-3)
    c = ctf_2d((64, 64), 10.0, 3.0, 300, 0.07)
    assert c[0, 0] == pytest.approx(-0.07)                 # amplitude contrast at DC
    assert c.min() < -0.5 and c.max() > 0.5                 # oscillates
