"""Noise statistics and the NOISY / CONTENT / BASELINE tilt-series (method section 2).

For each tilt, after standardising a reference (noisy) image and its
noiseless counterpart to mean 0 and std 1, the scale ``r`` minimising
``std(noisy - r * clean)`` is their Pearson correlation and the residual std
is ``sqrt(1 - r^2)``. With the reference's per-tilt mean and std these four
curves define the noise model; several references are combined by fitting a
least-squares polynomial over the tilt index to each curve and averaging.

Noise draws are made per tilt from ``(seed, tilt index)``, so a tilt's
noise does not depend on how a stack is split into jobs; NOISY, CONTENT and
BASELINE of one tomogram reuse the same draws, as the paper did.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ._json import dumps
from ._pairwise import BLOCK, block_for, blocked_sum, blocks, centred, correlation, deviation
from ._threads import for_each
from .errors import FaketInputError

CURVE_NAMES = ("r", "sigma", "mean", "std")
MODEL_FORMAT = "faket-noise-model"
MODEL_VERSION = 1


# --------------------------------------------------------------------------- statistics
class Tilts(Protocol):
    """A stack ``(n, H, W)`` read tilt by tilt: an array, a memory map, ``faket.io.MappedTilts``."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def tilt_stats(
    reference: Tilts, noiseless: Tilts, workers: int = 1, pool: Executor | None = None
) -> dict[str, np.ndarray]:
    """Per-tilt statistics of a reference against its noiseless projections.

    reference, noiseless: ``(n, H, W)``, read one tilt at a time (memory maps
    welcome), on ``workers`` threads (each tilt's figures are its own), or in the processes
    of ``pool`` (:func:`faket._procs.tilt_pool`; then each stack must pickle small, as
    ``faket.io.MappedTilts`` does): the same values.
    Returns float64 ``(n,)`` arrays: ``r`` (Pearson correlation = best scale),
    ``sigma`` (std of the standardised residual), ``mean``/``std`` of the
    reference, ``clean_mean``/``clean_std`` of the noiseless tilts.
    """
    if reference.shape != noiseless.shape:
        raise FaketInputError(
            f"reference has shape {tuple(reference.shape)} but noiseless has "
            f"{tuple(noiseless.shape)}: give the noiseless projections of the same "
            "specimen and geometry"
        )
    n = reference.shape[0]
    names = ("r", "sigma", "mean", "std", "clean_mean", "clean_std")
    out = {k: np.empty(n) for k in names}

    def keep(figures: tuple) -> None:
        for k, value in zip(names, figures[1:]):
            out[k][figures[0]] = value

    if pool is not None:
        from ._procs import each_in

        each_in(pool, _tilt_figures, [(reference, noiseless, i, block_for(1)) for i in range(n)], keep)
        return out
    block = block_for(min(workers, n))
    for_each(lambda i: keep(_tilt_figures(reference, noiseless, i, block)), range(n), workers)
    return out


def _tilt_figures(reference: Tilts, noiseless: Tilts, i: int, block: int) -> tuple:
    """Tilt ``i`` and its figures in :func:`tilt_stats`'s order (r, sigma, the reference's mean
    and std, the noiseless tilt's mean and std), in ``block``-value steps."""
    ma, za, sa = centred(reference[i], block)
    mb, zb, sb = centred(noiseless[i], block)
    if sa == 0 or sb == 0:
        raise FaketInputError(
            f"tilt {i} is constant in the reference or the noiseless stack: "
            "noise statistics need contrast in both"
        )
    r, sigma = correlation(za.reshape(-1), zb.reshape(-1), sa, sb, block)
    return i, r, sigma, ma, sa, mb, sb


def smooth(curve: np.ndarray, order: int) -> np.ndarray:
    """Least-squares polynomial of ``order`` over the tilt index, evaluated at each tilt.

    order -1 returns the curve unchanged; order 0 its mean.
    """
    c = np.asarray(curve, dtype=np.float64)
    if order < -1:
        raise FaketInputError(f"polynomial order must be >= -1, got {order}")
    if order == -1:
        return c.copy()
    idx = np.arange(len(c), dtype=np.float64)
    deg = min(order, len(c) - 1)
    return np.polyval(np.polyfit(idx, c, deg), idx)


def aggregate(series: Sequence[dict[str, np.ndarray]], order: int) -> dict[str, np.ndarray]:
    """Smooth each series' curves with :func:`smooth` and average them over the series."""
    if not series:
        raise FaketInputError("no (reference, noiseless) pairs given")
    n = len(series[0]["r"])
    if any(len(s["r"]) != n for s in series):
        raise FaketInputError("all reference tilt-series must have the same number of tilts")
    return {k: np.mean([smooth(s[k], order) for s in series], axis=0) for k in CURVE_NAMES}


def r_sigma_from_snr(snr: float) -> tuple[float, float]:
    """r and sigma for a given SNR (signal / noise power) with unit total variance."""
    if not snr > 0:
        raise FaketInputError(f"SNR must be > 0, got {snr}")
    return math.sqrt(snr / (1 + snr)), math.sqrt(1 / (1 + snr))


# --------------------------------------------------------------------------- model
@dataclass
class NoiseModel:
    """Per-tilt noise curves (each ``(n,)``) and the raw per-series statistics behind them.

    curves: ``r``, ``sigma``, ``mean``, ``std`` after aggregation with ``order``.
    series: raw :func:`tilt_stats` of each reference (empty when r/sigma were given).
    """

    curves: dict[str, np.ndarray]
    order: int
    series: list[dict[str, np.ndarray]] = field(default_factory=list)
    sources: list[dict[str, str]] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def n_tilts(self) -> int:
        return len(self.curves["r"])

    def baseline(self) -> dict[str, np.ndarray]:
        """Order-0 curves (one global r, sigma, mean, std): the BASELINE model."""
        if self.series:
            return aggregate(self.series, 0)
        return {k: np.full(self.n_tilts, float(np.mean(v))) for k, v in self.curves.items()}

    @classmethod
    def estimate(
        cls,
        pairs: Sequence[tuple[Tilts, Tilts]],
        order: int = 2,
        sources: list[dict[str, str]] | None = None,
        workers: int = 1,
        pool: Executor | None = None,
    ) -> NoiseModel:
        """Estimate from (reference, noiseless) stack pairs (tilts on ``workers`` threads, or in
        ``pool``'s processes: see :func:`tilt_stats`)."""
        series = [tilt_stats(ref, clean, workers, pool) for ref, clean in pairs]
        return cls(aggregate(series, order), order, series, sources or [])

    @classmethod
    def given(
        cls, r: float | Sequence[float], sigma: float | Sequence[float], reference: np.ndarray, order: int = 2
    ) -> NoiseModel:
        """r and sigma given (e.g. from an SNR); mean and std from the reference's tilts."""
        n = reference.shape[0]
        ref_mean = np.array([float(np.asarray(reference[i], np.float64).mean()) for i in range(n)])
        ref_std = np.array([float(np.asarray(reference[i], np.float64).std()) for i in range(n)])
        curves = {
            "r": np.broadcast_to(np.asarray(r, float), (n,)).copy(),
            "sigma": np.broadcast_to(np.asarray(sigma, float), (n,)).copy(),
            "mean": smooth(ref_mean, order),
            "std": smooth(ref_std, order),
        }
        return cls(curves, order)

    def to_json(self) -> dict:
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "order": self.order,
            "n_tilts": self.n_tilts,
            "curves": {k: [float(x) for x in v] for k, v in self.curves.items()},
            "series": [{k: [float(x) for x in v] for k, v in s.items()} for s in self.series],
            "sources": self.sources,
            "provenance": self.provenance,
        }

    def save(self, path: str | Path) -> Path:
        from .io import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(dumps(self.to_json()) + "\n")
        return Path(path)

    @classmethod
    def from_json(cls, d: dict) -> NoiseModel:
        """A model from :meth:`to_json`'s dict; ValueError/KeyError/TypeError when malformed."""
        if d.get("format") != MODEL_FORMAT:
            raise ValueError("not a faket noise model")
        curves = {k: np.asarray(d["curves"][k], dtype=np.float64) for k in CURVE_NAMES}
        series = [{k: np.asarray(v, dtype=np.float64) for k, v in s.items()} for s in d.get("series", [])]
        if len({len(v) for v in curves.values()}) != 1:
            raise ValueError("curves of different lengths")
        return cls(curves, int(d["order"]), series, d.get("sources", []), d.get("provenance", {}))

    @classmethod
    def load(cls, path: str | Path) -> NoiseModel:
        p = Path(path)
        if not p.is_file():
            raise FaketInputError(f"noise model {p} does not exist: run `faket noise estimate` first")
        try:
            return cls.from_json(json.loads(p.read_text()))
        except (ValueError, KeyError, TypeError) as err:
            raise FaketInputError(
                f"noise model {p} is not a valid faket noise model ({err}): "
                "make it with `faket noise estimate`"
            ) from None


# --------------------------------------------------------------------------- apply
def tilt_noise(seed: int, tilt: int, shape: tuple[int, int]) -> np.ndarray:
    """Standard normal draws for one tilt, from (seed, tilt index): ``(H, W)`` float32."""
    return np.random.default_rng([int(seed), int(tilt)]).standard_normal(shape, dtype=np.float32)


def standardise(image: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Image with mean 0 and std 1 (float64); a constant image becomes zeros. block: values per
    pass step (:func:`faket._pairwise.block_for`; the same result for any)."""
    _, d, s = centred(image, block)
    if not s > 0:
        return np.zeros_like(d)
    d /= s
    return d


def noisy_tilt(
    noiseless: np.ndarray, noise: np.ndarray, r: float, sigma: float, mean: float, std: float
) -> np.ndarray:
    """One tilt ``standardise(noiseless) * r + noise * sigma`` with its std, then mean, set.

    noiseless, noise: ``(H, W)``; returns float32 ``(H, W)``.
    """
    return _noisy(standardise(noiseless), noise, r, sigma, mean, std)


def _noisy(
    z: np.ndarray,
    noise: np.ndarray,
    r: float,
    sigma: float,
    mean: float,
    std: float,
    work: np.ndarray | None = None,
    block: int = BLOCK,
) -> np.ndarray:
    """:func:`noisy_tilt` of a standardised tilt ``z`` (float64) and its ``noise`` (each modality
    of a tilt shares both): the plain formulas' values bit for bit, in four passes over the
    pixels, ``block`` values at a time (:mod:`faket._pairwise`). work: a float64 array of
    ``z.size`` to compute in (the modalities of a tilt share one), or None."""
    zf, nf = z.reshape(-1), np.asarray(noise).reshape(-1)
    n = zf.size
    x, scratch = np.empty(n) if work is None else work, np.empty(min(n, block))

    def mix(start: int, stop: int) -> np.ndarray:  # z * r + noise * sigma
        w = scratch[: stop - start]
        w[...] = nf[start:stop]  # to float64, then times sigma: as the whole array would be
        w *= sigma
        v = np.multiply(zf[start:stop], r, out=x[start:stop])
        v += w
        return v

    m = blocked_sum(n, mix, block) / n
    s = deviation(x, m, block=block)

    def scale(start: int, stop: int) -> np.ndarray:  # the std first
        v = x[start:stop]
        if s > 0:
            v /= s
            v *= std
        return v

    m = blocked_sum(n, scale, block) / n
    out = np.empty(n, np.float32)
    for start in blocks(n, block):  # then the mean
        w = np.subtract(x[start : start + block], m, out=scratch[: min(block, n - start)])
        w += mean
        out[start : start + block] = w
    return out.reshape(z.shape)


MODALITIES = ("noisy", "content", "baseline")


def apply_tilt(
    noiseless: np.ndarray,
    tilt: int,
    model: NoiseModel,
    seed: int,
    modality: str = "noisy",
    content_sigma_factor: float = 0.25,
    baseline: dict[str, np.ndarray] | None = None,
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """One tilt of NOISY, CONTENT (sigma x factor) or BASELINE (order-0 curves).

    noise: ``tilt_noise(seed, tilt, shape)`` when already drawn (every modality of a
    tilt uses the same draw)."""
    return apply_tilt_modalities(
        noiseless, tilt, model, seed, [modality], content_sigma_factor, baseline, noise
    )[modality]


def apply_tilt_modalities(
    noiseless: np.ndarray,
    tilt: int,
    model: NoiseModel,
    seed: int,
    modalities: Sequence[str],
    content_sigma_factor: float = 0.25,
    baseline: dict[str, np.ndarray] | None = None,
    noise: np.ndarray | None = None,
    threads: int = 1,
) -> dict[str, np.ndarray]:
    """Several modalities of one tilt (``{modality: float32 (H, W)}``), each what
    :func:`apply_tilt` gives: the noise draw, the standardised tilt and the noise in float64
    are made once for all of them. threads: how many tilts are made at once (the same values,
    in blocks sized for them: :func:`faket._pairwise.block_for`)."""
    if noise is None:
        noise = tilt_noise(seed, tilt, noiseless.shape)
    block = block_for(threads)
    z = standardise(noiseless, block)
    work = np.empty(z.size)
    out = {}
    for m in modalities:
        curves = model.curves if m != "baseline" else (baseline or model.baseline())
        factor = content_sigma_factor if m == "content" else 1.0
        out[m] = _noisy(
            z,
            noise,
            curves["r"][tilt],
            curves["sigma"][tilt] * factor,
            curves["mean"][tilt],
            curves["std"][tilt],
            work,
            block,
        )
    return out


def apply(
    noiseless: np.ndarray,
    model: NoiseModel,
    seed: int,
    modality: str = "noisy",
    content_sigma_factor: float = 0.25,
) -> np.ndarray:
    """A whole ``(n, H, W)`` NOISY / CONTENT / BASELINE stack (float32)."""
    if modality not in MODALITIES:
        raise FaketInputError(f"unknown modality {modality!r}: use one of {', '.join(MODALITIES)}")
    if noiseless.shape[0] != model.n_tilts:
        raise FaketInputError(
            f"noiseless stack has {noiseless.shape[0]} tilts but the noise model "
            f"has {model.n_tilts}: use a model made for this tilt scheme"
        )
    base = model.baseline() if modality == "baseline" else None
    return np.stack(
        [
            apply_tilt(np.asarray(noiseless[i]), i, model, seed, modality, content_sigma_factor, base)
            for i in range(noiseless.shape[0])
        ]
    )
