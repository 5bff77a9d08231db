"""Noiseless projections of a density volume (method section 1).

The tilt axis is the volume's Y axis. For tilt angle theta, detector
coordinate u and beam coordinate t (both in voxels from the centre), the
projection sums the volume along the beam:

    p(theta, y, u) = sum_t V(z = cz - sin(theta) u + cos(theta) t, y,
                             x = cx + cos(theta) u + sin(theta) t)

with bilinear interpolation in (z, x), zero outside the volume, and the beam
sampled once per voxel over the whole diagonal, so nothing is cut at high
tilt. Centres are ``size // 2`` as in scikit-image's ``radon``, whose
sinogram of each Y slice this reproduces. The paper measured
``dose - projection`` with dose 0 (dense matter dark).

Every Y slice shares the same (z, x) geometry, so the operator is one sparse
matrix per group of angles, ``(angles x W) x (Z x X)``, applied to the volume
as a ``(Z x X) x Y`` matrix: one sparse-dense product per group.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch

from ._tensors import as_tensor
from .errors import FaketInputError
from .settings import ProjectionSettings

#: Upper bound on stored matrix entries per group of angles (about 12 bytes each).
MAX_ENTRIES = 1 << 25


def csr_from_rows(cols: torch.Tensor, vals: torch.Tensor, valid: torch.Tensor, n_cols: int) -> torch.Tensor:
    """A CSR matrix whose row r holds ``vals[r, k]`` at ``cols[r, k]`` where ``valid[r, k]``.

    cols, vals, valid: ``(R, K)``; duplicates within a row add up in products.
    """
    counts = valid.sum(dim=1)
    crow = torch.zeros(cols.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=crow[1:])
    idx_dtype = torch.int32 if max(n_cols, int(crow[-1])) < 2**31 else torch.int64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta state"
        return torch.sparse_csr_tensor(
            crow.to(idx_dtype),
            cols[valid].to(idx_dtype),
            vals[valid].to(torch.float32),
            (cols.shape[0], n_cols),
            check_invariants=False,
        )


def projection_matrix(angles_rad: torch.Tensor, nz: int, nx: int, width: int) -> torch.Tensor:
    """Sparse ray-sum operator for one group of angles.

    Returns a CSR matrix ``(len(angles) * width, nz * nx)``: row ``a * width + u``
    holds the bilinear weights of the voxels (z, x) on the ray of angle a and
    detector pixel u, summed along the beam in steps of one voxel.
    """
    n_t = int(math.ceil(math.hypot(nz, nx))) + 2
    u = torch.arange(width, dtype=torch.float64) - width // 2
    t = torch.arange(n_t, dtype=torch.float64) - n_t // 2
    c = torch.cos(angles_rad)[:, None, None]
    s = torch.sin(angles_rad)[:, None, None]
    z = nz // 2 - s * u[None, :, None] + c * t[None, None, :]  # (a, W, T)
    x = nx // 2 + c * u[None, :, None] + s * t[None, None, :]
    z0, x0 = torch.floor(z), torch.floor(x)
    fz, fx = z - z0, x - x0
    z0, x0 = z0.long(), x0.long()
    cols, vals, valid = [], [], []
    for dz, dx, w in (
        (0, 0, (1 - fz) * (1 - fx)),
        (0, 1, (1 - fz) * fx),
        (1, 0, fz * (1 - fx)),
        (1, 1, fz * fx),
    ):
        zi, xi = z0 + dz, x0 + dx
        valid.append((zi >= 0) & (zi < nz) & (xi >= 0) & (xi < nx) & (w > 0))
        cols.append(zi * nx + xi)
        vals.append(w)
    rows = len(angles_rad) * width
    return csr_from_rows(
        torch.stack(cols, -1).reshape(rows, -1),
        torch.stack(vals, -1).reshape(rows, -1),
        torch.stack(valid, -1).reshape(rows, -1),
        nz * nx,
    )


def angle_groups(n_angles: int, entries_per_angle: int) -> list[slice]:
    """Split angles into groups whose operator stays under MAX_ENTRIES entries."""
    per = max(1, MAX_ENTRIES // max(entries_per_angle, 1))
    return [slice(a, min(a + per, n_angles)) for a in range(0, n_angles, per)]


def project(
    volume: np.ndarray | torch.Tensor,
    angles_deg: np.ndarray | torch.Tensor,
    settings: ProjectionSettings = ProjectionSettings(),
    *,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Project a volume into a noiseless tilt-series.

    volume: ``(Z, Y, X)`` density (any units, per voxel).
    angles_deg: ``(n,)`` tilt angles in degrees about the Y axis.
    Returns ``(n, Y, W)`` float32 on ``device``: ``dose - ray sum`` (ray sums
    in voxel lengths times density), W = ``settings.detector_width`` or X.
    progress(k) is called with the number of tilts finished.
    """
    vol = as_tensor(volume, device)
    if vol.ndim != 3:
        raise FaketInputError(f"volume must be 3D (Z, Y, X), got shape {tuple(vol.shape)}")
    nz, ny, nx = vol.shape
    width = settings.detector_width or nx
    if width < 1:
        raise FaketInputError(f"detector width must be >= 1, got {width}")
    theta = torch.as_tensor(np.asarray(angles_deg, dtype=np.float64)) * (math.pi / 180.0)
    cols = vol.permute(0, 2, 1).reshape(nz * nx, ny)  # (Z*X, Y)
    out = torch.empty((len(theta), ny, width), dtype=torch.float32, device=device)
    n_t = int(math.ceil(math.hypot(nz, nx))) + 2
    for g in angle_groups(len(theta), width * n_t * 4):
        a = projection_matrix(theta[g], nz, nx, width).to(device)
        sums = (a @ cols).reshape(-1, width, ny)  # (a, W, Y)
        out[g] = sums.permute(0, 2, 1)
        if progress is not None:
            progress(g.stop - g.start)
    return settings.dose - out
