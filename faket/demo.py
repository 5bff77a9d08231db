"""The built-in demo: the whole FakET method on synthetic data, on one machine.

1. A reference specimen (phantom seed 0) and its physics-lite tilt-series:
   the style, and with its noiseless projections, the noise statistics.
2. A second specimen (seed 1) to simulate: projected (noiseless), then NOISY,
   CONTENT and BASELINE from the noise model.
3. FakET: CONTENT styled like the reference, starting from NOISY.
4. Weighted back-projection of each modality, and a preview picture.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import FaketInputError
from .io import MrcWriter, angles_range, write_mrc, write_tlt
from .provenance import provenance, write_provenance
from .settings import NSTSettings, PhantomSettings, ReconstructionSettings

MODALITY_ORDER = ("noiseless", "noisy", "baseline", "faket", "reference")


@contextlib.contextmanager
def _no_progress(total: int, what: str):
    yield lambda k=1: None


def run_demo(
    out_dir: Path,
    *,
    size: int = 96,
    angles: tuple[float, float, float] = (-60, 60, 3),
    vgg_weights: str = "imagenet",
    device: str = "cpu",
    say: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
    progress=_no_progress,
) -> dict[str, Path]:
    """Run the demo into ``out_dir``; returns the paths of what it wrote."""
    from .noise import NoiseModel
    from .nst import StyleTransfer, iter_stylize
    from .phantom import make_phantom, reference_tilt_series, write_particles_csv
    from .pipeline import MemorySink, prepare_noise, prepare_noiseless
    from .projection import project
    from .reconstruction import reconstruct
    from .weights import resolve_weights

    if size < 32:
        raise FaketInputError(f"demo size must be >= 32, got {size}")
    t_start = time.time()
    out_dir = Path(out_dir)
    ref_dir, tomo_dir = out_dir / "reference", out_dir / "tomo"
    ref_dir.mkdir(parents=True, exist_ok=True)
    tomo_dir.mkdir(parents=True, exist_ok=True)
    theta = angles_range(*angles)
    n_particles = max(8, int(40 * (size / 128) ** 2))
    paths: dict[str, Path] = {}

    # Weights first: a missing file should be known before any work.
    try:
        weights = resolve_weights(vgg_weights)
    except FaketInputError as err:
        if vgg_weights != "imagenet":
            raise
        warn(f"{err}")
        warn(
            "ImageNet VGG-19 weights are NOT available: this demo runs with RANDOM weights "
            "(--vgg-weights random), which the paper found much less realistic. "
            "Run `faket weights fetch` on a machine with internet for real results."
        )
        weights = resolve_weights("random")

    # 1. Reference specimen: style and noise statistics.
    say("[1/5] reference specimen and its physics-lite tilt-series")
    ref_settings = PhantomSettings(size=size, n_particles=n_particles, seed=0, angles=angles)
    ref_ph = make_phantom(ref_settings)
    reference = reference_tilt_series(ref_ph, theta, ref_settings)
    ref_clean = project(ref_ph.density, theta, device=device).cpu().numpy()
    vs = ref_ph.pixel_size
    paths["reference"] = write_mrc(ref_dir / "reference.mrc", reference, voxel_size=vs)
    write_mrc(ref_dir / "noiseless.mrc", ref_clean, voxel_size=vs)
    write_tlt(ref_dir / "angles.tlt", theta)
    model = NoiseModel.estimate(
        [(reference, ref_clean)],
        order=2,
        sources=[{"reference": str(paths["reference"]), "noiseless": str(ref_dir / "noiseless.mrc")}],
    )
    paths["noise_model"] = model.save(out_dir / "noise_model.json")

    # 2. The specimen to simulate.
    say("[2/5] specimen to simulate: labels, noiseless projections, NOISY/CONTENT/BASELINE")
    ph = make_phantom(PhantomSettings(size=size, n_particles=n_particles, seed=1, angles=angles))
    write_mrc(tomo_dir / "volume.mrc", ph.density, voxel_size=vs, volume=True)
    paths["labels"] = write_mrc(
        tomo_dir / "labels.mrc", ph.labels.astype(np.float32), voxel_size=vs, volume=True
    )
    paths["particles"] = write_particles_csv(tomo_dir / "particles.csv", ph.particles)
    paths["angles"] = write_tlt(tomo_dir / "angles.tlt", theta)
    sink = MemorySink(len(theta))
    prepare_noiseless(sink, theta, volume=ph.density, device=device)
    clean = sink.arrays["noiseless"]
    prepare_noise(sink, lambda i: clean[i], model, seed=1, content_sigma=0.25)
    stacks = {**sink.arrays, "reference": reference}
    for m in ("noiseless", "noisy", "content", "baseline"):
        paths[m] = write_mrc(tomo_dir / f"{m}.mrc", stacks[m], voxel_size=vs)

    # 3. FakET.
    say(f"[3/5] FakET style transfer of {len(theta)} tilts ({size}x{size}, {device})")
    st = NSTSettings()
    transfer = StyleTransfer(weights.state_dict, st, device=device)
    faket = np.empty_like(clean)
    t0 = time.time()
    with (
        MrcWriter(tomo_dir / "faket.mrc", clean.shape, voxel_size=vs) as w,
        progress(len(theta), "stylize") as advance,
    ):
        for start, images, _ in iter_stylize(stacks["content"], [reference], stacks["noisy"], transfer):
            for k, image in enumerate(images):
                w.write(start + k, image)
            faket[start : start + len(images)] = images
            advance(len(images))
    nst_seconds = time.time() - t0
    paths["faket"] = tomo_dir / "faket.mrc"
    stacks["faket"] = faket
    write_provenance(
        paths["faket"],
        provenance(
            st.to_dict(),
            weights=weights.identity,
            seeds={"noise": 1, "phantom": 1},
            extra={"nst_seconds": nst_seconds},
            device=device,
            precision=st.precision,
        ),
    )
    model.provenance = provenance({"order": 2}, inputs=model.sources[0])
    model.save(paths["noise_model"])

    # 4. Reconstructions and a picture.
    say("[4/5] reconstructions and preview")
    recs = {}
    rec_settings = ReconstructionSettings(filter="ramp", z_range=(0.25, 0.75))
    for m in ("noiseless", "noisy", "baseline", "faket"):
        recs[m] = reconstruct(stacks[m], theta, rec_settings, device=device).cpu().numpy()
        paths[f"{m}_rec"] = write_mrc(tomo_dir / f"{m}_rec.mrc", recs[m], voxel_size=vs, volume=True)
    paths["preview"] = write_preview(out_dir / "preview.png", stacks, recs, theta)
    record = provenance(
        {
            "demo": {"size": size, "angles": list(angles)},
            "nst": st.to_dict(),
            "reconstruction": rec_settings.__dict__,
        },
        weights=weights.identity,
        seeds={"reference_phantom": 0, "phantom": 1, "noise": 1},
        device=device,
        precision=st.precision,
    )
    for key in (
        "reference",
        "noiseless",
        "noisy",
        "content",
        "baseline",
        "labels",
        *(f"{m}_rec" for m in recs),
    ):
        write_provenance(paths[key], record)
    from .report import ReportInputs, write_report

    say("[5/5] report: metrics and figures")
    paths["report"] = write_report(
        ReportInputs(
            {m: paths[m] for m in ("noiseless", "noisy", "baseline", "faket", "reference")},
            {m: paths[f"{m}_rec"] for m in recs},
            paths["angles"],
        ),
        out_dir / "report",
        weights=weights,
        device=device,
    )
    say(
        f"done in {time.time() - t_start:.1f} s (style transfer {nst_seconds:.1f} s, "
        f"{nst_seconds / len(theta):.2f} s per tilt); weights: {weights.identity['kind']}"
    )
    for key in (
        "faket",
        "noisy",
        "baseline",
        "noiseless",
        "faket_rec",
        "labels",
        "particles",
        "noise_model",
        "preview",
        "report",
    ):
        say(f"  {key:<11} {paths[key]}")
    return paths


def write_preview(
    path: Path, stacks: dict[str, np.ndarray], recs: dict[str, np.ndarray], theta: np.ndarray
) -> Path:
    """A PNG: the 0 and +40 degree tilts of each modality, and central XY slices of reconstructions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_path

    tilt_ids = [int(np.argmin(np.abs(theta - a))) for a in (0.0, 40.0)]
    names = [m for m in MODALITY_ORDER if m in stacks]
    rows = len(tilt_ids) + 1
    fig, axes = plt.subplots(rows, len(names), figsize=(2.6 * len(names), 2.6 * rows))
    for r, ti in enumerate(tilt_ids):
        for c, m in enumerate(names):
            img = stacks[m][ti]
            lo, hi = np.percentile(img, [1, 99])
            axes[r, c].imshow(img, cmap="gray", vmin=lo, vmax=hi)
            axes[r, c].set_title(f"{m} {theta[ti]:+.0f} deg", fontsize=9)
    for c, m in enumerate(names):
        ax = axes[rows - 1, c]
        if m in recs:
            sl = recs[m][recs[m].shape[0] // 2]
            lo, hi = np.percentile(sl, [1, 99])
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"{m} rec, XY", fontsize=9)
        else:
            ax.axis("off")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)
