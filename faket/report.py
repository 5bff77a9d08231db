"""`faket report`: realism metrics and pictures of a simulation.

Metrics of each modality (NOISY, BASELINE, FakET, ...) against the noiseless
projections follow the paper's evaluation: MAE, MSE, PSNR and SSIM per tilt
and averaged, after each stack is scaled to [0, 1] by its own min and max
(so PSNR and SSIM use a data range of 1). Against the reference they are:
the distance of rotationally averaged power spectra, per-tilt mean and std,
intensity histograms, and the style distance the method minimises (Gram
matrices of VGG-19 features, summed over the style layers with the published
weights).

Stacks are read one tilt at a time (memory maps), so a report of a large
tilt-series needs memory for a few tilts only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._json import dumps
from .errors import FaketInputError
from .metrics import mae, mse, psnr, radial_power_spectrum, spectrum_distance, ssim

#: Display and table order of the modalities; ``noiseless`` and ``reference`` are the yardsticks.
MODALITIES = ("noiseless", "noisy", "baseline", "faket", "reference")
SIMULATED = ("noisy", "baseline", "faket")
REQUIRED = ("noiseless", "faket", "reference")


# --------------------------------------------------------------------------- inputs
@dataclass
class ReportInputs:
    """The stacks to compare (MRC paths or Zarr arrays); any simulated one may be missing.

    angles: a .tlt path or the angles themselves (degrees).
    """

    stacks: dict[str, Any]
    reconstructions: dict[str, Any] = field(default_factory=dict)
    angles: object = None


class _ArrayStack:
    """A Zarr array seen as an opened MRC stack (``data``, ``tilt``, ``shape``, ``path``)."""

    def __init__(self, array, role: str) -> None:
        self.data, self.path = array, f"{getattr(array, 'path', role)}"
        self.shape = tuple(array.shape)

    def tilt(self, i: int) -> np.ndarray:
        return np.asarray(self.data[i], dtype=np.float32)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _open(source, role: str, check_finite: bool = True):
    from .io import open_mrc

    if isinstance(source, (str, Path)):
        return open_mrc(source, role=role, check_finite=check_finite)
    return _ArrayStack(source, role)


def find_store_tomogram(store: Path, tomogram: str | None = None) -> ReportInputs:
    """The stacks of one tomogram of a faket run store (default: the first)."""
    from .store import done_mask, holder, open_store, tomograms

    root = open_store(store, mode="r")
    names = tomograms(root)
    if not names:
        raise FaketInputError(f"store {store} holds no tomogram")
    name = tomogram or names[0]
    if name not in names:
        raise FaketInputError(f"store {store} has no tomogram {name!r} (it has: {', '.join(names)})")
    g = root[name]
    shared = g.attrs.get("held_by", {})  # stacks another tomogram of the store holds
    stacks = {
        m: holder(root, g, k)[k]
        for m, k in (
            ("noiseless", "noiseless"),
            ("noisy", "noisy"),
            ("faket", "faket"),
            ("reference", "style"),
        )
        if k in g or k in shared
    }
    if "faket" in stacks and not done_mask(g, "faket").all():
        raise FaketInputError(f"{name}/faket in {store} is not complete: finish the run first")
    recs = {"faket": g["reconstruction"]} if "reconstruction" in g else {}
    return ReportInputs(stacks, recs, np.asarray(g.attrs["angles"]) if "angles" in g.attrs else None)


def find_run(run: Path) -> ReportInputs:
    """Find the stacks of a run folder (the demo's layout, or all files in one folder)."""
    run = Path(run)
    if (run / "zarr.json").is_file():
        return find_store_tomogram(run)
    if not run.is_dir():
        raise FaketInputError(
            f"run {run} is not a folder: give a run folder or the stacks with --noiseless/--faket/--reference"
        )
    folders = [run / "tomo", run / "reference", run]
    stacks, recs = {}, {}
    for m in MODALITIES:
        for f in folders:
            if (f / f"{m}.mrc").is_file():
                stacks[m] = f / f"{m}.mrc"
                break
        for f in folders:
            if (f / f"{m}_rec.mrc").is_file():
                recs[m] = f / f"{m}_rec.mrc"
                break
    angles = next((f / "angles.tlt" for f in folders if (f / "angles.tlt").is_file()), None)
    return ReportInputs(stacks, recs, angles)


# --------------------------------------------------------------------------- report
@dataclass
class Report:
    """Everything `faket report` computes; ``to_json`` is ``metrics.json``."""

    n_tilts: int
    angles: np.ndarray
    per_tilt: dict[str, dict[str, list[float]]]
    summary: dict[str, dict[str, float]]
    spectra: dict[str, np.ndarray]
    tilt_stats: dict[str, dict[str, np.ndarray]]
    histograms: dict[str, tuple[np.ndarray, np.ndarray]]
    style: dict[str, object]
    inputs: dict[str, str]

    def to_json(self) -> dict:
        def num(v: float):
            return "inf" if math.isinf(v) else float(v)

        return {
            "n_tilts": self.n_tilts,
            "angles": [float(a) for a in self.angles],
            "normalisation": "each stack scaled to [0, 1] by its own min and max; data range 1",
            "summary": {m: {k: num(v) for k, v in d.items()} for m, d in self.summary.items()},
            "per_tilt": {
                m: {k: [num(v) for v in vals] for k, vals in d.items()} for m, d in self.per_tilt.items()
            },
            "spectrum_distance_to_reference": {
                m: spectrum_distance(s, self.spectra["reference"]) for m, s in self.spectra.items()
            },
            "tilt_stats": {
                m: {k: [float(x) for x in v] for k, v in d.items()} for m, d in self.tilt_stats.items()
            },
            "style_distance": self.style,
            "inputs": self.inputs,
        }


def _open_all(inputs: ReportInputs):
    from .io import read_tlt

    missing = [m for m in REQUIRED if m not in inputs.stacks]
    if missing:
        raise FaketInputError(
            f"missing modality {', '.join(missing)}: a report needs the noiseless, "
            "FakET and reference stacks (give them or a run folder holding them)"
        )
    stacks = {m: _open(p, m) for m, p in inputs.stacks.items()}
    base = stacks["noiseless"].shape
    for m, s in stacks.items():
        if m == "reference":
            if s.shape[0] != base[0]:
                raise FaketInputError(
                    f"reference {s.path} has {s.shape[0]} tilts but noiseless "
                    f"{stacks['noiseless'].path} has {base[0]}: they must match"
                )
        elif s.shape != base:
            raise FaketInputError(
                f"{m} {s.path} has shape {s.shape} but noiseless "
                f"{stacks['noiseless'].path} has {base}: they must match"
            )
    if inputs.angles is None:
        angles = np.arange(base[0], dtype=np.float64)
    elif isinstance(inputs.angles, (str, Path)):
        angles = read_tlt(inputs.angles, expected=base[0])
    else:
        angles = np.asarray(inputs.angles, dtype=np.float64)
        if len(angles) != base[0]:
            raise FaketInputError(f"{len(angles)} angles for {base[0]} tilts")
    return stacks, angles


def check_inputs(inputs: ReportInputs) -> int:
    """Validate the inputs (presence, shapes, angles) before any work; returns the tilt count."""
    stacks, _ = _open_all(inputs)
    n = stacks["noiseless"].shape[0]
    for s in stacks.values():
        s.close()
    return n


def compute_report(
    inputs: ReportInputs,
    *,
    weights=None,
    style_tilts: int = 9,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Compute every metric; ``weights`` (a :class:`faket.weights.Weights`) enables the style distance."""
    from .nst import stack_range, to_unit

    stacks, angles = _open_all(inputs)
    n = stacks["noiseless"].shape[0]
    ranges = {m: stack_range(s.data) for m, s in stacks.items()}
    # The reference shows another specimen (or real data): it has no noiseless counterpart here.
    per_tilt: dict[str, dict[str, list[float]]] = {
        m: {"mae": [], "mse": [], "psnr": [], "ssim": []} for m in stacks if m in SIMULATED
    }
    spectra: dict[str, Any] = {m: 0.0 for m in stacks}
    stats = {m: {"mean": np.zeros(n), "std": np.zeros(n)} for m in stacks}
    for i in range(n):
        clean = to_unit(stacks["noiseless"].tilt(i), *ranges["noiseless"])
        for m, s in stacks.items():
            raw = s.tilt(i)
            stats[m]["mean"][i], stats[m]["std"][i] = raw.mean(dtype=np.float64), raw.std(dtype=np.float64)
            spectra[m] = spectra[m] + radial_power_spectrum(raw / (raw.std() or 1.0)) / n
            if m not in per_tilt:
                continue
            u = to_unit(raw, *ranges[m])
            per_tilt[m]["mae"].append(mae(u, clean))
            per_tilt[m]["mse"].append(mse(u, clean))
            per_tilt[m]["psnr"].append(psnr(u, clean))
            per_tilt[m]["ssim"].append(ssim(u, clean))
        if progress is not None:
            progress(1)
    per_tilt = {m: d for m, d in per_tilt.items() if d["mae"]}
    summary = {m: {k: float(np.mean(v)) for k, v in d.items()} for m, d in per_tilt.items()}
    histograms = _histograms(stacks)
    style: dict[str, Any] = (
        _style_distances(stacks, ranges, weights, style_tilts, device)
        if weights is not None
        else {"computed": False}
    )
    for m, d in style.get("mean", {}).items():
        summary.setdefault(m, {})["style_distance"] = d
    for s in stacks.values():
        s.close()
    return Report(
        n,
        angles,
        per_tilt,
        summary,
        spectra,
        stats,
        histograms,
        style,
        {
            m: str(p)
            for m, p in {
                **inputs.stacks,
                **{f"{k}_rec": v for k, v in inputs.reconstructions.items()},
            }.items()
        },
    )


def _histograms(stacks, bins: int = 100, sample: int = 200_000):
    """Density histograms of each stack (a strided sample of up to ``sample`` values)."""
    out = {}
    lo = min(
        float(np.percentile(s.data[:: max(1, s.shape[0] // 8)], 0.5))
        for m, s in stacks.items()
        if m != "noiseless"
    )
    hi = max(
        float(np.percentile(s.data[:: max(1, s.shape[0] // 8)], 99.5))
        for m, s in stacks.items()
        if m != "noiseless"
    )
    for m, s in stacks.items():
        step = max(1, int(np.prod(s.shape) // sample))
        values = np.concatenate([s.tilt(i).ravel()[::step] for i in range(s.shape[0])])
        edges = (
            np.linspace(values.min(), values.max(), bins + 1)
            if m == "noiseless"
            else np.linspace(lo, hi, bins + 1)
        )
        counts, edges = np.histogram(values, bins=edges, density=True)
        out[m] = (counts, edges)
    return out


def _style_distances(stacks, ranges, weights, style_tilts: int, device: str) -> dict:
    """The method's style loss of each modality against the reference, on a subset of tilts."""
    import torch

    from .nst import StyleTransfer, gram, scaled_error, to_unit
    from .settings import NSTSettings

    transfer = StyleTransfer(weights.state_dict, NSTSettings(), device=device)
    n = stacks["reference"].shape[0]
    tilts = sorted(set(np.linspace(0, n - 1, min(style_tilts, n)).round().astype(int).tolist()))
    layers = transfer.style_layers

    def grams(m: str, i: int):
        x = to_unit(stacks[m].tilt(i)[None], *ranges[m])
        with torch.no_grad():
            feats = transfer.net(transfer._as_batch(x), layers)
        return {k: gram(feats[k]) for k in layers}

    per: dict[str, list] = {m: [] for m in stacks if m != "reference"}
    for i in tilts:
        ref = grams("reference", i)
        for m in per:
            g = grams(m, i)
            d = sum(float(scaled_error(g[k], ref[k])) * w for k, w in zip(layers, transfer.style_weights))
            per[m].append(d)
    return {
        "computed": True,
        "tilts": tilts,
        "weights": weights.identity,
        "per_tilt": per,
        "mean": {m: float(np.mean(v)) for m, v in per.items()},
    }


# --------------------------------------------------------------------------- assemble
def write_report(
    inputs: ReportInputs,
    out_dir: Path,
    *,
    weights=None,
    style_tilts: int = 9,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Compute the report and write ``out_dir/index.html``, ``metrics.json`` and the PNGs.

    The folder is written under a temporary name and then replaces ``out_dir`` whole.
    """
    from ._report_render import (
        histogram_figure,
        metrics_figure,
        montage,
        reconstruction_figure,
        render_html,
        spectra_figure,
        tilt_stats_figure,
    )
    from .io import atomic_dir, atomic_path

    report = compute_report(
        inputs, weights=weights, style_tilts=style_tilts, device=device, progress=progress
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:  # the report appears whole or not at all
        figures = {
            "montage.png": montage(inputs, report.angles, tmp / "montage.png"),
            "spectra.png": spectra_figure(report, tmp / "spectra.png"),
            "histograms.png": histogram_figure(report, tmp / "histograms.png"),
            "tilt_stats.png": tilt_stats_figure(report, tmp / "tilt_stats.png"),
            "metrics_per_tilt.png": metrics_figure(report, tmp / "metrics_per_tilt.png"),
        }
        rec = reconstruction_figure(inputs, tmp / "reconstruction.png")
        if rec is not None:
            figures["reconstruction.png"] = rec
        data = report.to_json()
        data["figures"] = sorted(figures)
        with atomic_path(tmp / "metrics.json") as f:
            f.write_text(dumps(data) + "\n")
        with atomic_path(tmp / "index.html") as f:
            f.write_text(render_html(data, figures))
    return out_dir / "index.html"
