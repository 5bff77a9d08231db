"""A small labelled synthetic specimen and a physics-lite reference tilt-series.

The specimen is a slab in a cubic volume: a curved lipid-bilayer-like sheet
and particles of four classes with distinct shapes and sizes (a solid
sphere, a hollow shell, a rod, a dumbbell), placed without overlap. It comes
with a class-label volume and a particle list. The reference tilt-series is
made from it with a simple weak-phase microscope model: projected potential,
a contrast transfer function with defocus, spherical aberration, amplitude
contrast and an envelope, inelastic attenuation growing with the path length
at high tilt, and Poisson shot noise for the dose of each tilt. It is no
physics simulator; it gives the demo and the tests a style reference with
the right kind of texture without any outside data.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .projection import project
from .settings import PhantomSettings, ProjectionSettings

#: class id -> (name, density, size parameter in voxels at 128^3)
CLASSES = {
    1: ("sphere", 1.0, 6.0),
    2: ("shell", 1.2, 8.0),
    3: ("rod", 1.0, 9.0),
    4: ("dumbbell", 1.1, 4.0),
}
MEMBRANE_LABEL = 5
MEMBRANE_DENSITY = 0.8


@dataclass
class Phantom:
    """A labelled specimen.

    density: ``(Z, Y, X)`` float32; labels: ``(Z, Y, X)`` uint8 (0 background,
    1-4 particle classes, 5 membrane); particles: rows of class id, class name,
    centre (z, y, x) in voxels and a unit axis (z, y, x); pixel_size in Angstrom.
    """

    density: np.ndarray
    labels: np.ndarray
    particles: list[dict]
    pixel_size: float


def _shape_mask(cls: int, rel: np.ndarray, axis: np.ndarray, size: float) -> np.ndarray:
    """Boolean mask of a class's shape on offsets ``rel`` ``(3, d, d, d)`` from its centre."""
    r2 = (rel**2).sum(0)
    if cls == 1:  # solid sphere
        return r2 <= size**2
    if cls == 2:  # hollow shell, wall 2 voxels
        return (r2 <= size**2) & (r2 >= (size - 2.0) ** 2)
    along = np.tensordot(axis, rel, axes=1)  # coordinate along the axis
    perp2 = r2 - along**2
    if cls == 3:  # rod: radius 2.5, half length size
        return (np.abs(along) <= size) & (perp2 <= 2.5**2)
    # dumbbell: two spheres of radius size, centres 1.1 size from the middle
    d1 = r2 - 2 * along * 1.1 * size + (1.1 * size) ** 2
    d2 = r2 + 2 * along * 1.1 * size + (1.1 * size) ** 2
    return (d1 <= size**2) | (d2 <= size**2)


def make_phantom(settings: PhantomSettings = PhantomSettings()) -> Phantom:
    """Build the labelled specimen (seeded)."""
    n = int(settings.size)
    rng = np.random.default_rng(settings.seed)
    k = n / 128.0  # sizes scale with the volume
    density = np.zeros((n, n, n), np.float32)
    labels = np.zeros((n, n, n), np.uint8)
    zc = n // 2
    # Membrane: a bilayer sheet, z = zc + amplitude * sin(2 pi x / period), leaflets 1.5 voxels.
    x = np.arange(n)
    phase = rng.uniform(0, 2 * math.pi)
    surface = zc - 0.22 * n + 0.05 * n * np.sin(2 * math.pi * x / (0.8 * n) + phase)  # (X,)
    zz = np.arange(n)[:, None]
    dist = zz - surface[None, :]  # (Z, X) signed distance in z
    leaflets = np.abs(np.abs(dist) - 2.0 * k) <= 1.0 * k
    core = np.abs(dist) <= 3.5 * k
    sheet = np.where(leaflets, MEMBRANE_DENSITY, 0.25 * MEMBRANE_DENSITY * core)
    density += sheet[:, None, :].astype(np.float32)
    labels[np.broadcast_to(core[:, None, :], labels.shape)] = MEMBRANE_LABEL
    # Particles: rejection sampling inside the slab, away from the membrane.
    particles: list[dict] = []
    occupied = labels > 0
    attempts = 0
    while len(particles) < settings.n_particles and attempts < 200 * settings.n_particles:
        attempts += 1
        cls = 1 + len(particles) % len(CLASSES)
        name, dens, size = CLASSES[cls]
        size = size * k
        ext = int(math.ceil(2.3 * size)) + 1
        c = np.array(
            [rng.uniform(zc - 0.15 * n, zc + 0.2 * n), rng.uniform(ext, n - ext), rng.uniform(ext, n - ext)]
        )
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        lo = np.floor(c).astype(int) - ext
        hi = lo + 2 * ext + 1
        if (lo < 0).any() or (hi > n).any():
            continue
        grid = np.mgrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float64)
        rel = grid - c[:, None, None, None]
        mask = _shape_mask(cls, rel, axis, size)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grown = mask | np.roll(mask, 1, 0) | np.roll(mask, -1, 0) | np.roll(mask, 1, 2) | np.roll(mask, -1, 2)
        if (occupied[box] & grown).any():
            continue
        density[box][mask] += dens
        labels[box][mask] = cls
        occupied[box] |= mask
        particles.append(
            {
                "class_id": cls,
                "class_name": name,
                "z": float(c[0]),
                "y": float(c[1]),
                "x": float(c[2]),
                "axis_z": float(axis[0]),
                "axis_y": float(axis[1]),
                "axis_x": float(axis[2]),
            }
        )
    return Phantom(density, labels, particles, float(settings.pixel_size))


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV."""
    v = voltage_kv * 1e3
    return 12.2643 / math.sqrt(v * (1 + 0.978476e-6 * v))


def ctf_2d(
    shape: tuple[int, int],
    pixel_size: float,
    defocus_um: float,
    voltage_kv: float,
    amplitude_contrast: float,
    cs_mm: float = 2.7,
    b_factor: float = 200.0,
) -> np.ndarray:
    """Contrast transfer function ``(H, W)`` (fft order) with a B-factor envelope.

    CTF(k) = -(sqrt(1 - w^2) sin(chi) + w cos(chi)) exp(-B k^2 / 4),
    chi = pi lambda dz k^2 - pi/2 Cs lambda^3 k^4; dz > 0 is underfocus.
    """
    lam = electron_wavelength(voltage_kv)
    ky = np.fft.fftfreq(shape[0], d=pixel_size)[:, None]
    kx = np.fft.fftfreq(shape[1], d=pixel_size)[None, :]
    k2 = kx**2 + ky**2
    dz = defocus_um * 1e4
    cs = cs_mm * 1e7
    chi = math.pi * lam * dz * k2 - 0.5 * math.pi * cs * lam**3 * k2**2
    w = amplitude_contrast
    return -(math.sqrt(1 - w * w) * np.sin(chi) + w * np.cos(chi)) * np.exp(-b_factor * k2 / 4)


def reference_tilt_series(
    phantom: Phantom,
    angles_deg: np.ndarray,
    settings: PhantomSettings = PhantomSettings(),
    *,
    phase_per_density_voxel: float = 0.02,
    mean_free_path_nm: float = 350.0,
) -> np.ndarray:
    """Physics-lite micrographs of the phantom at each tilt: ``(n, Y, X)`` float32 counts.

    Weak-phase image ``1 + 2 IFFT(CTF * FFT(phase))`` of the projected
    potential, times the inelastic attenuation ``exp(-thickness / (mfp cos theta))``,
    sampled with Poisson noise of ``dose_per_tilt * pixel_size^2`` electrons per pixel.
    """
    rng = np.random.default_rng(settings.seed + 7919)
    proj = -project(phantom.density, angles_deg, ProjectionSettings()).numpy()  # ray sums >= 0
    phase = proj * phase_per_density_voxel
    ctf = ctf_2d(
        proj.shape[1:],
        phantom.pixel_size,
        settings.defocus_um,
        settings.voltage_kv,
        settings.amplitude_contrast,
    )
    image = 1 + 2 * np.fft.ifft2(np.fft.fft2(phase) * ctf).real
    thickness_nm = 0.4 * phantom.density.shape[0] * phantom.pixel_size / 10
    cosines = np.cos(np.deg2rad(np.asarray(angles_deg, dtype=np.float64)))
    attenuation = np.exp(-thickness_nm / (mean_free_path_nm * cosines))[:, None, None]
    expected = np.clip(image * attenuation, 0, None) * settings.dose_per_tilt * phantom.pixel_size**2
    return rng.poisson(expected).astype(np.float32)


def write_particles_csv(path: str | Path, particles: list[dict]) -> Path:
    """Write the particle list (class, centre in voxels, axis) as CSV, atomically."""
    from .io import atomic_path

    fields = ["class_id", "class_name", "z", "y", "x", "axis_z", "axis_y", "axis_x"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for p in particles:
            w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in p.items()})
    return Path(path)
