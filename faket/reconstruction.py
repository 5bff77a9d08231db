"""Weighted (filtered) back-projection of a tilt-series (method section 4).

Each projection is filtered along X (the axis perpendicular to the tilt axis
Y) and smeared back along its rays. The geometry is the adjoint of
:mod:`faket.projection`: voxel (z, x) meets detector pixel

    u = cos(theta) (x - cx) - sin(theta) (z - cz) + cu,

read with linear interpolation, as in scikit-image's ``iradon``. Each angle
is weighted by half its angular spacing (pi / (2 n) for a full half-turn, as
``iradon``), so a limited tilt range keeps the right scale.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .errors import FaketInputError
from .projection import MAX_ENTRIES, as_tensor, csr_from_rows
from .settings import FILTERS, ReconstructionSettings


def padded_size(width: int) -> int:
    """FFT length for filtering rows of ``width`` pixels: next power of 2 >= 2 width, >= 64."""
    return max(64, 2 ** int(math.ceil(math.log2(2 * width))))


def ramp_filter(size: int, name: str = "ramp") -> torch.Tensor:
    """1D reconstruction filter for an rfft of length ``size``: ``(size // 2 + 1,)`` float64.

    The ramp is the transform of the discrete spatial-domain ramp
    (h[0] = 1/4, h[n odd] = -1 / (pi n)^2), which has no DC offset; windows:
    shepp-logan (sinc), cosine, hann; ``none`` is all ones (plain back-projection).
    """
    if name == "none":
        return torch.ones(size // 2 + 1, dtype=torch.float64)
    n = torch.arange(size, dtype=torch.float64)
    n = torch.minimum(n, size - n)  # circular distance
    h = torch.zeros(size, dtype=torch.float64)
    h[0] = 0.25
    odd = (n % 2) == 1
    h[odd] = -1.0 / (math.pi * n[odd]) ** 2
    filt = 2 * torch.fft.rfft(h).real
    f = torch.fft.rfftfreq(size, dtype=torch.float64)  # cycles per pixel, 0 .. 0.5
    if name == "ramp":
        pass
    elif name == "shepp-logan":
        filt = filt * torch.sinc(f)
    elif name == "cosine":
        filt = filt * torch.cos(math.pi * f)
    elif name == "hann":
        filt = filt * 0.5 * (1 + torch.cos(2 * math.pi * f))
    else:
        raise FaketInputError(f"unknown filter {name!r}: use one of {', '.join(FILTERS)}")
    return filt


def approx_shrec_filter(ny: int, nx: int) -> torch.Tensor:
    """The paper's ``approxShrec`` 2D filter for an fft2 of a ``(ny, nx)`` projection.

    A product of a centred Gaussian (sigma = size // 5, lifted by 0.2), a ramp
    along X that saturates at 2 sigma, and a disc of radius size // 2 (size =
    max(ny, nx)), scaled to max 1; reverse-engineered by the FakET authors to
    match SHREC 2021 reconstructions. Returns ``(ny, nx)`` float64 in fft order.
    """
    size = max(ny, nx)
    sigma = size // 5
    k = torch.arange(size, dtype=torch.float64) - size // 2  # centred frequency index
    ky, kx = k[:, None], k[None, :]
    gauss = torch.exp(-(kx**2 + ky**2) / (2.0 * sigma**2)) + 0.2
    ramp = torch.clamp(kx.abs() / (2 * sigma), max=1.0).expand(size, size)
    disc = ((kx**2 + ky**2).sqrt() <= size // 2).to(torch.float64)
    filt = gauss * ramp * disc
    filt = filt / filt.max()
    y0, x0 = (size - ny) // 2, (size - nx) // 2
    filt = filt[y0 : y0 + ny, x0 : x0 + nx]
    return torch.fft.ifftshift(filt)


def filter_projections(tilts: torch.Tensor, name: str = "ramp") -> torch.Tensor:
    """Filter projections ``(n, Y, W)`` along W (zero-padded rfft); approxShrec is 2D."""
    n, ny, w = tilts.shape
    if name == "approxShrec":
        filt = approx_shrec_filter(ny, w).to(tilts.device, torch.float32)
        return torch.fft.ifft2(torch.fft.fft2(tilts) * filt).real.to(torch.float32)
    size = padded_size(w)
    filt = ramp_filter(size, name).to(tilts.device, torch.float32)
    spec = torch.fft.rfft(tilts, n=size, dim=-1) * filt
    return torch.fft.irfft(spec, n=size, dim=-1)[..., :w].contiguous()


def bin_tilts(tilts: np.ndarray | torch.Tensor, factor: int, method: str = "mean") -> torch.Tensor:
    """Bin projections ``(n, Y, X)`` by an integer factor in Y and X.

    mean: block average (edges that do not fill a block are dropped);
    cubic: cubic-spline resampling (scipy.ndimage.zoom, order 3), the paper's.
    """
    t = torch.as_tensor(tilts)
    if factor == 1:
        return t
    if factor < 1:
        raise FaketInputError(f"binning must be >= 1, got {factor}")
    n, ny, nx = t.shape
    if method == "mean":
        t = t[:, : ny // factor * factor, : nx // factor * factor]
        return t.reshape(n, ny // factor, factor, nx // factor, factor).mean(dim=(2, 4))
    if method == "cubic":
        from scipy.ndimage import zoom

        arr = t.cpu().numpy()
        out = np.stack([zoom(a, 1.0 / factor, order=3) for a in arr]).astype(np.float32)
        return torch.from_numpy(out).to(t.device)
    raise FaketInputError(f"unknown binning method {method!r}: use mean or cubic")


def angle_weights(angles_rad: np.ndarray) -> np.ndarray:
    """Half the angular spacing around each angle (radians); pi/(2n) for a uniform half-turn."""
    a = np.asarray(angles_rad, dtype=np.float64)
    if len(a) == 1:
        return np.array([math.pi / 2])
    order = np.argsort(a)
    s = a[order]
    gaps = np.gradient(s)
    w = np.empty_like(a)
    w[order] = gaps / 2
    return w


def backprojection_matrix(
    angles_rad: torch.Tensor, z: torch.Tensor, nx: int, width: int, nz_total: int
) -> torch.Tensor:
    """Sparse back-projector: rows = voxels (z, x) for the given z indices, columns = a * W + u.

    Each row holds the linear-interpolation weights of its detector position u
    in every projection. Returns CSR ``(len(z) * nx, len(angles) * width)``.
    """
    c = torch.cos(angles_rad)[None, None, :]
    s = torch.sin(angles_rad)[None, None, :]
    zz = (z.to(torch.float64) - nz_total // 2)[:, None, None]
    xx = (torch.arange(nx, dtype=torch.float64) - nx // 2)[None, :, None]
    u = c * xx - s * zz + width // 2  # (z, X, a)
    u0 = torch.floor(u)
    f = u - u0
    u0 = u0.long()
    base = torch.arange(len(angles_rad), dtype=torch.int64)[None, None, :] * width
    cols, vals, valid = [], [], []
    for du, wt in ((0, 1 - f), (1, f)):
        ui = u0 + du
        valid.append((ui >= 0) & (ui < width) & (wt > 0))
        cols.append(base + ui)
        vals.append(wt)
    rows = len(z) * nx
    return csr_from_rows(
        torch.stack(cols, -1).reshape(rows, -1),
        torch.stack(vals, -1).reshape(rows, -1),
        torch.stack(valid, -1).reshape(rows, -1),
        len(angles_rad) * width,
    )


def z_slices(nz: int, z_range: tuple[float, float]) -> range:
    """Indices of the Z slices kept from a volume of ``nz`` slices for fractions ``z_range``."""
    lo, hi = z_range
    return range(int(math.floor(lo * nz)), int(math.ceil(hi * nz)))


def binned_size(n: int, factor: int, method: str = "mean") -> int:
    """Pixels left of ``n`` after binning by ``factor`` (``mean`` drops the rest, ``cubic`` rounds)."""
    return n // factor if method == "mean" else int(round(n / factor))


def check_angle_spread(angles_deg: np.ndarray, where: str = "the tilt angles") -> None:
    """Refuse a degenerate tilt scheme: several tilts that all share one angle (degrees)."""
    a = np.asarray(angles_deg, dtype=np.float64)
    if a.size > 1 and float(np.ptp(a)) == 0.0:
        raise FaketInputError(
            f"{where}: all {a.size} tilts are at {a[0]:g} degrees, so nothing can be reconstructed: "
            "give the tilt-series' real angles"
        )


def check_settings(settings: ReconstructionSettings) -> None:
    """Refuse impossible reconstruction settings (one line), before any work.

    The model validates on construction; this re-validates settings made without
    it (``model_construct``, ``model_copy(update=...)``).
    """
    ReconstructionSettings(**settings.to_dict())


def output_shape(
    tilt_shape: tuple[int, int, int], settings: ReconstructionSettings = ReconstructionSettings()
) -> tuple[int, int, int]:
    """The ``(Z, Y', W')`` shape :func:`reconstruct` gives for tilts of ``(n, Y, W)``."""
    check_settings(settings)
    _, ny, w = tilt_shape
    ny, w = (binned_size(x, settings.binning, settings.binning_method) for x in (ny, w))
    if min(ny, w) < 1:
        raise FaketInputError(f"binning {settings.binning} leaves no pixels of {tilt_shape[1:]} images")
    return len(z_slices(settings.thickness or w, settings.z_range)), ny, w


def reconstruct(
    tilts: np.ndarray | torch.Tensor,
    angles_deg: np.ndarray,
    settings: ReconstructionSettings = ReconstructionSettings(),
    *,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Weighted back-projection of a tilt-series into a volume.

    tilts: ``(n, Y, W)`` projections; angles_deg: ``(n,)`` degrees.
    Returns ``(Z, Y', W')`` float32 on ``device`` (Y', W' after binning; Z =
    thickness or W', then cropped to ``z_range``). progress(k) reports Z slices.
    """
    check_settings(settings)
    if len(angles_deg) != tilts.shape[0]:
        raise FaketInputError(f"{len(angles_deg)} angles for {tilts.shape[0]} tilts: give one angle per tilt")
    check_angle_spread(angles_deg)
    t = bin_tilts(as_tensor(tilts, device), settings.binning, settings.binning_method)
    n, ny, w = t.shape
    nz = settings.thickness or w
    z_idx = torch.tensor(list(z_slices(nz, settings.z_range)), dtype=torch.int64)
    theta = np.asarray(angles_deg, dtype=np.float64) * math.pi / 180
    weights = torch.as_tensor(angle_weights(theta), dtype=torch.float32, device=t.device)
    filt = filter_projections(t, settings.filter) * weights[:, None, None]
    cols = filt.permute(0, 2, 1).reshape(n * w, ny)  # (a*W, Y)
    out = torch.empty((len(z_idx), ny, w), dtype=torch.float32, device=t.device)
    z_per = max(1, MAX_ENTRIES // (w * n * 2))
    th = torch.as_tensor(theta)
    for z0 in range(0, len(z_idx), z_per):
        zs = z_idx[z0 : z0 + z_per]
        b = backprojection_matrix(th, zs, w, w, nz).to(t.device)
        out[z0 : z0 + len(zs)] = (b @ cols).reshape(len(zs), w, ny).permute(0, 2, 1)
        if progress is not None:
            progress(len(zs))
    return out
