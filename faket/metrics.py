"""Image metrics of the paper's evaluation: MAE, MSE, PSNR, SSIM, radial power spectra.

All take float arrays of equal shape scaled to [0, 1] (``data_range`` 1) unless said.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import FaketInputError

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute error of two images of the same shape."""
    return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error of two images of the same shape."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(np.mean(d * d))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    m = mse(a, b)
    return math.inf if m == 0 else float(10 * math.log10(data_range**2 / m))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004) of two 2D images.

    7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample covariances, mean over
    the pixels whose window lies inside the image (scikit-image's defaults).
    """
    from scipy.ndimage import uniform_filter

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = SSIM_WINDOW
    if min(x.shape) < w:
        raise FaketInputError(f"images of {x.shape} are smaller than the {w}x{w} SSIM window")
    n = w * w
    cov = n / (n - 1)
    ux, uy = uniform_filter(x, w), uniform_filter(y, w)
    vx = cov * (uniform_filter(x * x, w) - ux * ux)
    vy = cov * (uniform_filter(y * y, w) - uy * uy)
    vxy = cov * (uniform_filter(x * y, w) - ux * uy)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (w - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def radial_power_spectrum(image: np.ndarray) -> np.ndarray:
    """Rotationally averaged power spectrum of a 2D image, DC removed.

    Returns ``(min(H, W) // 2 + 1,)``: mean |FFT|^2 over rings of integer
    radius in units of 1 / min(H, W) cycles per pixel (ring 0 is the DC ring).
    """
    x = np.asarray(image, np.float64)
    x = x - x.mean()
    h, w = x.shape
    p = np.abs(np.fft.fft2(x)) ** 2 / (h * w)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    n = min(h, w)
    r = np.rint(np.sqrt(fy**2 + fx**2) * n).astype(int).ravel()
    keep = r <= n // 2
    sums = np.bincount(r[keep], weights=p.ravel()[keep], minlength=n // 2 + 1)
    counts = np.bincount(r[keep], minlength=n // 2 + 1)
    return sums / np.maximum(counts, 1)


def spectrum_distance(spec: np.ndarray, ref: np.ndarray) -> float:
    """RMS difference of log10 spectra (rings 1..end), each normalised to total power 1."""
    a, b = np.asarray(spec, np.float64)[1:], np.asarray(ref, np.float64)[1:]
    m = min(len(a), len(b))
    a, b = a[:m] / a[:m].sum(), b[:m] / b[:m].sum()
    tiny = 1e-30
    return float(np.sqrt(np.mean((np.log10(a + tiny) - np.log10(b + tiny)) ** 2)))
