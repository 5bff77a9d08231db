"""The report's pictures (PNG), table and HTML page, from a computed report."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from .report import MODALITIES, Report, ReportInputs, _open


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Lay the figure out, write it as PNG (atomically) and close it."""
    from .io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    _plt().close(fig)
    return path


def montage(
    inputs: ReportInputs, angles: np.ndarray, path: Path, show: tuple[float, ...] = (0.0, -40.0, 40.0)
) -> Path:
    """Rows: tilts nearest to ``show`` degrees; columns: modalities.

    NOISY, BASELINE, FakET and the reference share contrast limits (1st-99th
    percentile of the reference tilt); the noiseless projections, in other
    units, use their own.
    """
    plt = _plt()
    names = [m for m in MODALITIES if m in inputs.stacks]
    rows = sorted({int(np.argmin(np.abs(angles - a))) for a in show}, key=lambda i: angles[i])
    fig, axes = plt.subplots(
        len(rows), len(names), figsize=(2.7 * len(names), 2.8 * len(rows)), squeeze=False
    )
    opened = {m: _open(inputs.stacks[m], m, check_finite=False) for m in names}
    for r, i in enumerate(rows):
        lo, hi = np.percentile(opened["reference"].tilt(i), [1, 99])
        for c, m in enumerate(names):
            img = opened[m].tilt(i)
            vmin, vmax = np.percentile(img, [1, 99]) if m == "noiseless" else (lo, hi)
            axes[r, c].imshow(img, cmap="gray", vmin=vmin, vmax=vmax)
            axes[r, c].set_title(f"{m}  {angles[i]:+.0f}", fontsize=9)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    for s in opened.values():
        s.close()
    return _save(fig, path)


def spectra_figure(report: Report, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in MODALITIES:
        if m in report.spectra:
            s = report.spectra[m]
            f = np.arange(len(s)) / (2 * (len(s) - 1))
            ax.semilogy(f[1:], s[1:] / s[1:].sum(), label=m, lw=2 if m in ("faket", "reference") else 1)
    ax.set_xlabel("spatial frequency (cycles / pixel)")
    ax.set_ylabel("normalised power")
    ax.set_title("rotationally averaged power spectra")
    ax.legend()
    return _save(fig, path)


def histogram_figure(report: Report, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for m, (counts, edges) in report.histograms.items():
        ax = axes[0] if m == "noiseless" else axes[1]
        ax.plot(0.5 * (edges[1:] + edges[:-1]), counts, label=m)
    axes[0].set_title("noiseless projections")
    axes[1].set_title("simulated and reference")
    for ax in axes:
        ax.set_xlabel("intensity")
        ax.set_ylabel("density")
        ax.legend()
    return _save(fig, path)


def tilt_stats_figure(report: Report, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for m in MODALITIES:
        if m in report.tilt_stats and m != "noiseless":
            for ax, k in zip(axes, ("mean", "std")):
                ax.plot(
                    report.angles, report.tilt_stats[m][k], "o-" if m == "reference" else "-", label=m, ms=3
                )
    for ax, k in zip(axes, ("mean", "std")):
        ax.set_xlabel("tilt angle (deg)")
        ax.set_ylabel(f"per-tilt {k}")
        ax.legend()
    return _save(fig, path)


def metrics_figure(report: Report, path: Path) -> Path:
    plt = _plt()
    keys = ("mae", "mse", "psnr", "ssim")
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, k in zip(axes, keys):
        for m, d in report.per_tilt.items():
            vals = np.array(d[k], dtype=float)
            ax.plot(report.angles[: len(vals)], np.where(np.isinf(vals), np.nan, vals), label=m)
        ax.set_title(f"{k.upper()} vs noiseless")
        ax.set_xlabel("tilt angle (deg)")
    axes[0].legend()
    return _save(fig, path)


def reconstruction_figure(inputs: ReportInputs, path: Path) -> Path | None:
    """Central XY and XZ slices of each reconstruction."""
    if not inputs.reconstructions:
        return None
    plt = _plt()
    names = [m for m in MODALITIES if m in inputs.reconstructions]
    fig, axes = plt.subplots(2, len(names), figsize=(2.8 * len(names), 5.6), squeeze=False)
    for c, m in enumerate(names):
        with _open(inputs.reconstructions[m], f"{m} reconstruction", check_finite=False) as v:
            xy = v.tilt(v.shape[0] // 2)
            xz = np.asarray(v.data[:, v.shape[1] // 2, :], np.float32)
        for r, (img, name) in enumerate(((xy, "XY"), (xz, "XZ"))):
            lo, hi = np.percentile(img, [1, 99])
            axes[r, c].imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect="auto" if r else "equal")
            axes[r, c].set_title(f"{m} {name}", fontsize=9)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    return _save(fig, path)


def metrics_table(data: dict) -> list[list[str]]:
    """Rows of the summary table: modality, MAE, MSE, PSNR, SSIM, spectrum and style distance."""

    def fmt_value(v, fmt: str) -> str:
        return "" if v is None else (v if isinstance(v, str) else fmt.format(v))

    rows = []
    for m in MODALITIES:
        if m not in data["summary"] and m not in data["spectrum_distance_to_reference"]:
            continue
        s = data["summary"].get(m, {})

        def f(k, fmt="{:.4f}", s=s):
            return fmt_value(s.get(k), fmt)

        rows.append(
            [
                m,
                f("mae"),
                f("mse"),
                f("psnr", "{:.2f}"),
                f("ssim"),
                "{:.3f}".format(data["spectrum_distance_to_reference"][m]),
                f("style_distance", "{:.4g}"),
            ]
        )
    return rows


TABLE_HEADER = [
    "modality",
    "MAE",
    "MSE",
    "PSNR (dB)",
    "SSIM",
    "spectrum dist. to ref.",
    "style dist. to ref.",
]


def render_html(data: dict, figures: dict[str, Path]) -> str:
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>\n" for r in metrics_table(data)
    )
    head = "".join(f"<th>{h}</th>" for h in TABLE_HEADER)
    captions = {
        "montage.png": "Tilts near 0 and +/-40 degrees. NOISY, BASELINE, FakET and the reference "
        "share contrast limits (1st-99th percentile of the reference tilt).",
        "spectra.png": "Rotationally averaged power spectra (each normalised to total power 1).",
        "histograms.png": "Intensity histograms.",
        "tilt_stats.png": "Per-tilt mean and std against the reference.",
        "metrics_per_tilt.png": "Metrics against the noiseless projections, per tilt "
        "(stacks scaled to [0, 1]).",
        "reconstruction.png": "Central XY and XZ slices of the reconstructions.",
    }
    figs = "".join(
        f'<figure><img src="{name}" alt="{name}"><figcaption>'
        f"{html.escape(captions.get(name, ''))}</figcaption></figure>\n"
        for name in figures
    )
    style = data["style_distance"]
    style_note = (
        f"Style distance on tilts {style['tilts']} with {style['weights'].get('kind')} VGG-19 weights."
        if style.get("computed")
        else "Style distance not computed."
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>faket report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;}}
table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:4px 8px;text-align:right}}
figure{{margin:1.5em 0}}img{{max-width:100%}}</style></head><body>
<h1>faket report</h1>
<p>{data["n_tilts"]} tilts. Metrics against the noiseless projections after scaling each stack to
[0, 1] by its own min and max. {html.escape(style_note)}</p>
<table><tr>{head}</tr>
{rows}</table>
{figs}<p>All numbers: <a href="metrics.json">metrics.json</a>.</p>
</body></html>
"""
