"""Particles of a stored tomogram in the frames export formats use.

The particle list (``particles.csv`` of ``faket phantom``, kept in the store) gives each
centre in voxels of the simulated volume, whose voxel is the tilt-series' pixel. The
reconstruction is that volume binned by ``b`` and cropped in Z: voxel ``k`` of it is
centred on volume voxel ``k*b + (b-1)/2`` (plus the crop's first slice in Z).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Particle:
    """One particle: class, centre ``(z, y, x)`` in volume voxels, unit axis ``(z, y, x)``."""

    class_id: int
    class_name: str
    zyx: tuple[float, float, float]
    axis: tuple[float, float, float]


@dataclass(frozen=True)
class Frame:
    """A tomogram's voxel grid against the volume's: voxel size (Angstrom), binning, first Z slice."""

    voxel: float  # Angstrom
    binning: int
    z0: int  # first kept Z slice, in tomogram voxels
    shape: tuple[int, int, int]  # (Z, Y, X) of the tomogram

    def from_volume(self, zyx: np.ndarray) -> np.ndarray:
        """Volume voxel coordinates ``(..., 3)`` (z, y, x) -> tomogram voxel coordinates."""
        b = self.binning
        return (np.asarray(zyx, float) - (b - 1) / 2) / b - np.array([self.z0, 0, 0])

    def to_volume_axis(self, n: int, axis: int) -> np.ndarray:
        """Volume coordinates of the tomogram's ``n`` voxel centres along one axis (0 = z)."""
        b, start = self.binning, (self.z0 if axis == 0 else 0)
        return (np.arange(n) + start) * b + (b - 1) / 2

    def to_volume(self, zyx: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`from_volume`."""
        b = self.binning
        return (np.asarray(zyx, float) + np.array([self.z0, 0, 0])) * b + (b - 1) / 2


def particles(g) -> list[Particle]:
    """The particle list stored with a tomogram (empty when its spec gave none)."""
    rows = csv.DictReader(io.StringIO(g.attrs.get("particles_csv") or ""))
    return [
        Particle(
            int(r["class_id"]),
            r["class_name"],
            (float(r["z"]), float(r["y"]), float(r["x"])),
            (float(r.get("axis_z") or 1), float(r.get("axis_y") or 0), float(r.get("axis_x") or 0)),
        )
        for r in rows
    ]


def tomogram_frame(g) -> Frame:
    """The reconstruction's frame, from its recorded settings (binning, thickness, Z range)."""
    from .reconstruction import z_slices

    rec = g["reconstruction"]
    settings = (g.attrs.get("settings") or {}).get("reconstruct") or {}
    b = int(settings.get("binning", 1))
    width = g["faket"].shape[2] // b if "faket" in g else rec.shape[2]
    z_range = tuple(settings.get("z_range", (0.0, 1.0)))
    z0 = z_slices(int(settings.get("thickness") or width), (float(z_range[0]), float(z_range[1]))).start
    voxel = float(rec.attrs.get("voxel_size", float(g.attrs.get("voxel_size", 1.0)) * b))
    return Frame(voxel, b, z0, tuple(rec.shape))


def rotation_matrix(axis: tuple[float, float, float]) -> np.ndarray:
    """A rotation ``R`` (x, y, z order) that takes the reference's z axis onto the particle's axis.

    ``R = Rz(rot) Ry(tilt)`` with ``rot = atan2(ay, ax)``, ``tilt = acos(az)``: the ZYZ Euler
    angles (rot, tilt, psi = 0) of :func:`euler_zyz`.
    """
    rot, tilt, _ = euler_zyz(axis)
    a, t = math.radians(rot), math.radians(tilt)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    ry = np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])
    return rz @ ry


def euler_zyz(axis: tuple[float, float, float]) -> tuple[float, float, float]:
    """ZYZ Euler angles (rot, tilt, psi) in degrees of an axis given as (z, y, x)."""
    az, ay, ax = axis
    return math.degrees(math.atan2(ay, ax)), math.degrees(math.acos(max(-1.0, min(1.0, az)))), 0.0


def euler_zxz(axis: tuple[float, float, float]) -> tuple[float, float, float]:
    """ZXZ Euler angles (phi, theta, psi) in degrees (DeepFinder's) of an axis given as (z, y, x)."""
    az, ay, ax = axis
    return math.degrees(math.atan2(ax, -ay)), math.degrees(math.acos(max(-1.0, min(1.0, az)))), 0.0


def class_table(items: list[Particle]) -> dict[int, str]:
    """Class id -> name of the classes present, in id order."""
    return dict(sorted({p.class_id: p.class_name for p in items}.items()))


def labels_in_frame(labels: np.ndarray, frame: Frame) -> np.ndarray:
    """A label volume (volume frame) sampled at the tomogram's voxel centres (nearest voxel)."""
    idx = [
        np.clip(np.floor(frame.to_volume_axis(k, axis)).astype(int), 0, labels.shape[axis] - 1)
        for axis, k in enumerate(frame.shape)
    ]
    return labels[np.ix_(*idx)]
