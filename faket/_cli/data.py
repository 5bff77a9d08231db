"""Commands of the data stages: info, phantom, project, noise, weights, demo."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from .. import __version__
from ..console import progress_bar, say, warn
from ..errors import FaketInputError
from ..settings import (
    GivenNoise,
    NoiseSettings,
    NSTSettings,
    PhantomSettings,
    ProjectionSettings,
)
from .base import (
    _NOISE,
    _PH,
    _angles_option,
    _device,
    _floats,
    _overwrite_option,
    _reproducible_option,
    _settings,
    _switch,
    app,
    noise_app,
    weights_app,
)


# --------------------------------------------------------------------------- info
@app.command()
def info() -> None:
    """Versions, compute devices and where the VGG-19 weights would come from."""
    import platform

    import numpy
    import torch

    from ..reproducible import ENV_VAR, compute_record
    from ..weights import weights_status

    print(f"faket {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}")
    rec = compute_record("cpu")
    pin = ", ".join(f"{k}={v}" for k, v in rec["cpu_pin"].items()) or "not pinned"
    print(
        f"cpu: {rec['device_name']}, {rec['cpu_threads']} threads, kernels {rec['cpu_capability']} "
        f"({pin}); reproducible switch {'on' if rec['reproducible'] else 'off'} ({ENV_VAR})"
    )
    print(f"cuda build: {rec['cuda'] or 'none'}, cudnn: {rec['cudnn'] or 'none'}")
    print(
        f"precision: {NSTSettings().precision} = float32 on the CPU, tf32 convolutions on CUDA "
        "(the published arithmetic), strict float32 with FAKET_REPRODUCIBLE=1"
    )
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB")
    else:
        print("cuda: not available")
    st = weights_status()
    print(f"imagenet weights: {st['imagenet']} ({st['path']})")


# --------------------------------------------------------------------------- phantom
#: What `faket phantom` writes into its folder.
PHANTOM_FILES = ("volume.mrc", "labels.mrc", "reference.mrc", "angles.tlt", "particles.csv", "phantom.json")


@app.command()
def phantom(
    out_dir: Path = typer.Argument(
        ..., help="Folder for volume.mrc, labels.mrc, particles.csv, angles.tlt and reference.mrc."
    ),
    size: int = typer.Option(_PH.size, help="Edge of the cubic volume in voxels."),
    pixel_size: float = typer.Option(_PH.pixel_size, help="Voxel size in Angstrom."),
    n_particles: int = typer.Option(_PH.n_particles, help="Particles to place (4 classes)."),
    angles: str = typer.Option(
        ",".join(f"{a:g}" for a in _PH.angles), help="Tilt angles as START,STOP,STEP in degrees."
    ),
    defocus: float = typer.Option(_PH.defocus_um, help="Defocus in micrometres (underfocus)."),
    dose: float = typer.Option(_PH.dose_per_tilt, help="Electrons per square Angstrom per tilt."),
    seed: int = typer.Option(_PH.seed, help="Random seed."),
    overwrite: bool = _overwrite_option(),
) -> None:
    """A labelled synthetic specimen and a physics-lite reference tilt-series of it."""
    from ..io import angles_range, check_output_path, write_mrc, write_tlt
    from ..phantom import make_phantom, reference_tilt_series, write_particles_csv
    from ..provenance import provenance, write_provenance

    for name in PHANTOM_FILES:
        check_output_path(out_dir / name, overwrite=overwrite)

    a = _floats(angles, "--angles")
    if len(a) != 3 or a[2] <= 0 or a[1] < a[0]:
        raise FaketInputError(f"--angles must be START,STOP,STEP with STEP > 0, got {angles!r}")
    if size < 16:
        raise FaketInputError(f"--size must be >= 16, got {size}")
    st = _settings(
        PhantomSettings,
        size=size,
        pixel_size=pixel_size,
        n_particles=n_particles,
        seed=seed,
        angles=a,
        defocus_um=defocus,
        dose_per_tilt=dose,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    ph = make_phantom(st)
    theta = angles_range(*a)
    ref = reference_tilt_series(ph, theta, st)
    write_mrc(out_dir / "volume.mrc", ph.density, voxel_size=pixel_size, volume=True)
    write_mrc(out_dir / "labels.mrc", ph.labels.astype("float32"), voxel_size=pixel_size, volume=True)
    write_mrc(out_dir / "reference.mrc", ref, voxel_size=pixel_size)
    write_tlt(out_dir / "angles.tlt", theta)
    write_particles_csv(out_dir / "particles.csv", ph.particles)
    write_provenance(out_dir / "phantom", provenance(st.__dict__, seeds={"phantom": seed}))
    say(f"{len(ph.particles)} particles, {len(theta)} tilts -> {out_dir}")


# --------------------------------------------------------------------------- project
@app.command()
def project(
    volume: Path = typer.Argument(..., help="Density volume (MRC, Z,Y,X)."),
    angles: Path = _angles_option(),
    output: Path = typer.Option(..., "--output", "-o", help="Noiseless tilt-series (MRC)."),
    dose: float = typer.Option(ProjectionSettings().dose, help="Projections are DOSE - ray sum."),
    detector_width: Optional[int] = typer.Option(
        None, help="Detector width in pixels [default: the volume's X width]."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    overwrite: bool = _overwrite_option(),
) -> None:
    """Noiseless projections (content) of a volume, tilt axis Y."""
    from ..io import check_output_path, open_mrc, read_tlt, write_mrc
    from ..projection import project as run_projection
    from ..provenance import provenance, write_provenance
    from ..reconstruction import check_angle_spread

    st = _settings(ProjectionSettings, dose=dose, detector_width=detector_width)
    check_output_path(output, inputs={"volume": volume, "angles": angles}, overwrite=overwrite)
    dev = _device(device)
    with open_mrc(volume, role="volume") as vol:
        theta = read_tlt(angles)
        check_angle_spread(theta, f"angles {angles}")
        with progress_bar(len(theta), "project") as advance:
            tilts = run_projection(vol.data, theta, st, device=dev, progress=advance)
        vs = vol.voxel_size[0] or 1.0
    write_mrc(output, tilts.cpu().numpy(), voxel_size=vs)
    write_provenance(output, provenance(st.__dict__, inputs={"volume": volume, "angles": angles}, device=dev))
    say(f"{tuple(tilts.shape)} -> {output}")


# --------------------------------------------------------------------------- noise
@noise_app.command("estimate")
def noise_estimate(
    reference: List[Path] = typer.Option(
        ..., "--reference", "-r", help="Reference (noisy) tilt-series; repeat for several."
    ),
    noiseless: List[Path] = typer.Option(
        ...,
        "--noiseless",
        "-n",
        help="Noiseless projections of the same specimen, one per --reference, in the same order.",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Noise model (JSON)."),
    order: int = typer.Option(
        _NOISE.order, help="Polynomial order over the tilt index (-1 raw, 0 constant; paper 2)."
    ),
    overwrite: bool = _overwrite_option(),
) -> None:
    """Per-tilt r, sigma, mean, std from (reference, noiseless) pairs."""
    from ..io import check_output_path, open_mrc
    from ..noise import NoiseModel
    from ..provenance import provenance

    _settings(NoiseSettings, order=order)
    if len(reference) != len(noiseless):
        raise FaketInputError(
            f"{len(reference)} --reference but {len(noiseless)} --noiseless: give them in pairs"
        )
    check_output_path(output, inputs={"reference": reference, "noiseless": noiseless}, overwrite=overwrite)
    pairs, stacks = [], []
    for r, n in zip(reference, noiseless):
        a, b = open_mrc(r, role="reference"), open_mrc(n, role="noiseless")
        stacks += [a, b]
        if a.shape != b.shape:
            raise FaketInputError(
                f"reference {r} has shape {a.shape} but noiseless {n} has {b.shape}: they must match"
            )
        pairs.append((a.data, b.data))
    model = NoiseModel.estimate(
        pairs, order, [{"reference": str(r), "noiseless": str(n)} for r, n in zip(reference, noiseless)]
    )
    for s in stacks:
        s.close()
    model.provenance = provenance(
        {"order": order},
        inputs={
            **{f"reference{k}": r for k, r in enumerate(reference)},
            **{f"noiseless{k}": n for k, n in enumerate(noiseless)},
        },
    )
    model.save(output)
    say(f"r {model.curves['r'].min():.3f}..{model.curves['r'].max():.3f}, {model.n_tilts} tilts -> {output}")


def _noise_model_for(n_tilts, noiseless, model, reference, snr, r, sigma, order):
    """The noise model of `faket noise apply`: a saved one, or given r/sigma (or SNR) with a reference."""
    from ..io import open_mrc
    from ..noise import NoiseModel, r_sigma_from_snr

    if model is not None:
        nm = NoiseModel.load(model)
    else:
        if reference is None:
            raise FaketInputError("give --model, or --reference with --snr or --r and --sigma")
        if snr is not None:
            r, sigma = r_sigma_from_snr(snr)
        if r is None or sigma is None:
            raise FaketInputError("without --model give --snr, or both --r and --sigma")
        with open_mrc(reference, role="reference") as ref:
            if ref.shape[0] != n_tilts:
                raise FaketInputError(
                    f"reference {reference} has {ref.shape[0]} tilts but noiseless "
                    f"{noiseless} has {n_tilts}: they must match"
                )
            nm = NoiseModel.given(r, sigma, ref.data, order)
    if nm.n_tilts != n_tilts:
        raise FaketInputError(
            f"noiseless {noiseless} has {n_tilts} tilts but the noise model "
            f"has {nm.n_tilts}: use a model made for this tilt scheme"
        )
    return nm


@noise_app.command("apply")
def noise_apply(
    noiseless: Path = typer.Argument(..., help="Noiseless tilt-series (MRC)."),
    out_dir: Path = typer.Option(
        ..., "--out-dir", "-o", help="Folder for noisy.mrc, content.mrc, baseline.mrc."
    ),
    model: Optional[Path] = typer.Option(None, help="Noise model from `faket noise estimate`."),
    reference: Optional[Path] = typer.Option(
        None, help="Reference tilt-series for the per-tilt mean/std when r and sigma are given."
    ),
    snr: Optional[float] = typer.Option(None, help="Give r and sigma by an SNR (with --reference)."),
    r: Optional[float] = typer.Option(None, help="Correlation r (with --sigma and --reference)."),
    sigma: Optional[float] = typer.Option(None, help="Residual sigma (with --r and --reference)."),
    order: int = typer.Option(
        _NOISE.order, help="Smoothing order of the reference mean/std when r and sigma are given."
    ),
    content_sigma: float = typer.Option(
        _NOISE.content_sigma_factor, help="Sigma factor of the CONTENT tilt-series."
    ),
    seed: int = typer.Option(0, help="Seed of the noise draws (one per tomogram)."),
    modalities: str = typer.Option("noisy,content,baseline", help="Which stacks to write."),
    overwrite: bool = _overwrite_option(),
) -> None:
    """NOISY, CONTENT (sigma x 0.25) and BASELINE (order 0) tilt-series."""
    from ..io import MrcWriter, check_output_path, open_mrc
    from ..noise import MODALITIES
    from ..pipeline import WriterSink, prepare_noise
    from ..provenance import provenance, write_provenance

    _settings(NoiseSettings, order=order, content_sigma_factor=content_sigma)
    _settings(GivenNoise, r=r, sigma=sigma, snr=snr)
    mods = [m.strip() for m in modalities.split(",") if m.strip()]
    bad = [m for m in mods if m not in MODALITIES]
    if bad or not mods:
        raise FaketInputError(f"unknown modality {bad[0] if bad else ''!r}: use {', '.join(MODALITIES)}")
    for m in mods:
        check_output_path(
            out_dir / f"{m}.mrc",
            inputs={"noiseless": noiseless, "model": model, "reference": reference},
            overwrite=overwrite,
        )
    with open_mrc(noiseless, role="noiseless") as clean:
        nm = _noise_model_for(clean.shape[0], noiseless, model, reference, snr, r, sigma, order)
        vs = clean.voxel_size[0] or 1.0
        with contextlib.ExitStack() as stack, progress_bar(len(mods) * clean.shape[0], "noise") as advance:
            writers = {
                m: stack.enter_context(MrcWriter(out_dir / f"{m}.mrc", clean.shape, voxel_size=vs))
                for m in mods
            }
            prepare_noise(
                WriterSink(writers, clean.shape[0]), clean.tilt, nm, seed, mods, content_sigma, advance
            )
    for m in mods:
        write_provenance(
            out_dir / f"{m}.mrc",
            provenance(
                {"modality": m, "content_sigma_factor": content_sigma, "order": nm.order},
                inputs={"noiseless": noiseless, "model": model or "", "reference": reference or ""},
                seeds={"noise": seed},
            ),
        )
    say(f"{', '.join(mods)} -> {out_dir}")


# --------------------------------------------------------------------------- weights
@weights_app.command("fetch")
def weights_fetch(
    dest: Optional[Path] = typer.Option(None, help="Where to save [default: torch hub cache]."),
) -> None:
    """Download torchvision's ImageNet VGG-19 file once (hash-checked)."""
    from ..weights import fetch_imagenet, hub_checkpoint_path

    try:
        path = fetch_imagenet(dest, progress=True)
    except OSError as err:
        raise FaketInputError(
            f"download failed ({getattr(err, 'reason', err)}): run this on a "
            f"machine with internet, then copy the file to {hub_checkpoint_path()}"
        ) from None
    say(f"saved {path}")


@weights_app.command("check")
def weights_check(path: Path = typer.Argument(..., help="A VGG-19 state dict file.")) -> None:
    """Load a weights file safely and check keys, shapes and dtypes."""
    from ..provenance import sha256_of
    from ..weights import load_weights_file

    sd = load_weights_file(path)
    print(f"ok: {len(sd)} tensors, sha256 {sha256_of(path)}")


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo_out"), "--out-dir", "-o", help="Output folder."),
    size: int = typer.Option(96, min=16, help="Volume edge in voxels (>= 16)."),
    angles: str = typer.Option("-60,60,3", help="START,STOP,STEP in degrees."),
    vgg_weights: str = typer.Option(
        "imagenet", help="imagenet (falls back to random when missing, loudly), random or a file."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    reproducible: bool = _reproducible_option(),
) -> None:
    """The whole method on built-in synthetic data: phantom -> project -> noise -> stylize -> reconstruct."""
    _switch(reproducible)
    from ..demo import run_demo

    a = _floats(angles, "--angles")
    if len(a) != 3 or a[2] <= 0:
        raise FaketInputError(f"--angles must be START,STOP,STEP, got {angles!r}")
    run_demo(
        out_dir,
        size=size,
        angles=a,
        vgg_weights=vgg_weights,
        device=_device(device),
        say=say,
        warn=warn,
        progress=progress_bar,
    )
