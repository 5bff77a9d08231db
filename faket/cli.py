"""The ``faket`` command line: one typer app, one subcommand per stage.

Bad input ends with one line on stderr (``faket: error: ...``) and exit code
2; outputs are written to a temporary name and renamed when complete, with
their provenance in ``<output>.json``. Heavy modules are imported inside the
commands so that ``faket --help`` and short commands start quickly.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__
from .console import err_console, progress_bar, run_app, say, warn
from .errors import FaketInputError
from .reproducible import HELP as REPRODUCIBLE_HELP
from .settings import (
    INITS,
    PAPER_RECONSTRUCTION,
    NoiseSettings,
    NSTSettings,
    PhantomSettings,
    ProjectionSettings,
    ReconstructionSettings,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="FakET: simulate cryo-ET tilt-series with neural style transfer (Harar et al., arXiv 2304.02011).",
)
noise_app = typer.Typer(no_args_is_help=True, help="Noise model: estimate it, apply it.")
weights_app = typer.Typer(no_args_is_help=True, help="VGG-19 weights: fetch, check.")
app.add_typer(noise_app, name="noise")
app.add_typer(weights_app, name="weights")

_NST = NSTSettings()


def _reproducible_option() -> bool:
    return typer.Option(False, "--reproducible", help=REPRODUCIBLE_HELP)


def _switch(on: bool) -> None:
    """Apply ``--reproducible`` before anything imports torch."""
    if on:
        from .reproducible import enable

        enable()


_REC = ReconstructionSettings()
_PH = PhantomSettings()
_NOISE = NoiseSettings()


# --------------------------------------------------------------------------- helpers
def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise FaketInputError(f"{what} must be comma-separated integers, got {text!r}") from None


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise FaketInputError(f"{what} must be comma-separated numbers, got {text!r}") from None


#: Settings keys whose CLI option has another name.
_OPTIONS = {"memory_budget_gb": "--memory-budget", "defocus_um": "--defocus", "dose_per_tilt": "--dose"}


def _settings(cls, **values):
    """Settings made from CLI options; a bad value's line names the option (``--step-size``)."""
    try:
        return cls(**values)
    except FaketInputError as err:
        m = re.match(r"^[a-z_]+\.([a-z_]+)( = .*)$", str(err))
        if m is None:
            raise
        key = m.group(1)
        raise FaketInputError(_OPTIONS.get(key, "--" + key.replace("_", "-")) + m.group(2)) from None


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FaketInputError(f"device {name} asked for but no CUDA GPU is visible: use --device cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise FaketInputError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    return name


# --------------------------------------------------------------------------- info
@app.command()
def info() -> None:
    """Versions, compute devices and where the VGG-19 weights would come from."""
    import platform

    import numpy
    import torch

    from .reproducible import ENV_VAR, compute_record
    from .weights import weights_status

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
) -> None:
    """A labelled synthetic specimen and a physics-lite reference tilt-series of it."""
    from .io import angles_range, provenance, write_mrc, write_provenance, write_tlt
    from .phantom import make_phantom, reference_tilt_series, write_particles_csv

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
    angles: Path = typer.Option(..., "--angles", help="Tilt angles, IMOD .tlt (degrees)."),
    output: Path = typer.Option(..., "--output", "-o", help="Noiseless tilt-series (MRC)."),
    dose: float = typer.Option(ProjectionSettings().dose, help="Projections are DOSE - ray sum."),
    detector_width: Optional[int] = typer.Option(
        None, help="Detector width in pixels [default: the volume's X width]."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Noiseless projections (content) of a volume, tilt axis Y."""
    from .io import check_output_path, open_mrc, provenance, read_tlt, write_mrc, write_provenance
    from .projection import project as run_projection

    check_output_path(output)
    dev = _device(device)
    with open_mrc(volume, role="volume") as vol:
        theta = read_tlt(angles)
        st = _settings(ProjectionSettings, dose=dose, detector_width=detector_width)
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
) -> None:
    """Per-tilt r, sigma, mean, std from (reference, noiseless) pairs."""
    from .io import check_output_path, open_mrc, provenance
    from .noise import NoiseModel

    if len(reference) != len(noiseless):
        raise FaketInputError(
            f"{len(reference)} --reference but {len(noiseless)} --noiseless: give them in pairs"
        )
    check_output_path(output)
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
    from .io import open_mrc
    from .noise import NoiseModel, r_sigma_from_snr

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
) -> None:
    """NOISY, CONTENT (sigma x 0.25) and BASELINE (order 0) tilt-series."""
    from .io import MrcWriter, check_output_path, open_mrc, provenance, write_provenance
    from .noise import MODALITIES
    from .pipeline import WriterSink, prepare_noise

    mods = [m.strip() for m in modalities.split(",") if m.strip()]
    bad = [m for m in mods if m not in MODALITIES]
    if bad or not mods:
        raise FaketInputError(f"unknown modality {bad[0] if bad else ''!r}: use {', '.join(MODALITIES)}")
    for m in mods:
        check_output_path(out_dir / f"{m}.mrc")
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


# --------------------------------------------------------------------------- stylize
@app.command()
def stylize(
    content: Path = typer.Argument(..., help="CONTENT tilt-series (MRC, n,Y,X)."),
    style: List[Path] = typer.Argument(
        ..., help="Style (reference) tilt-series; several are averaged by --style-weights."
    ),
    init: str = typer.Option(_NST.init, help=f"Start: an MRC file (NOISY) or {'/'.join(INITS)}."),
    output: Path = typer.Option(..., "--output", "-o", help="Result tilt-series (MRC)."),
    vgg_weights: str = typer.Option("imagenet", help="imagenet, random or a .pth file."),
    weights_seed: int = typer.Option(0, help="Seed of --vgg-weights random."),
    content_layers: str = typer.Option(
        ",".join(map(str, _NST.content_layers)), help="Content layer indices of VGG-19 features."
    ),
    content_layer_weights: str = typer.Option(
        ",".join(f"{w:g}" for w in _NST.content_layer_weights), help="Relative content layer weights."
    ),
    style_layers: str = typer.Option(
        ",".join(map(str, _NST.style_layers)), help="Style layer indices (relu1_1..relu5_1)."
    ),
    style_layer_weights: str = typer.Option(
        ",".join(f"{w:g}" for w in _NST.style_layer_weights), help="Relative style layer weights."
    ),
    style_weights: Optional[str] = typer.Option(
        None, help="Relative weights of several style stacks [default: equal]."
    ),
    content_weight: float = typer.Option(_NST.content_weight, help="Content loss weight."),
    tv_weight: float = typer.Option(_NST.tv_weight, help="Total variation weight."),
    iterations: int = typer.Option(_NST.iterations, help="Adam steps per scale."),
    initial_iterations: Optional[int] = typer.Option(
        None, help="Adam steps at the first scale [default: --iterations]."
    ),
    step_size: float = typer.Option(_NST.step_size, help="Adam learning rate."),
    avg_decay: float = typer.Option(_NST.avg_decay, help="Decay of the iterate average."),
    pooling: str = typer.Option(_NST.pooling, help="max, average or l2."),
    min_scale: Optional[int] = typer.Option(
        None, help="Longest side at the first scale [default: image size]."
    ),
    end_scale: Optional[int] = typer.Option(
        None, help="Longest side at the last scale [default: image size]."
    ),
    batch_size: int = typer.Option(_NST.batch_size, help="Tilts per network call."),
    tile_size: Optional[int] = typer.Option(
        None,
        help="Compute in tiles of at most this many "
        "pixels, lined up with 1024-pixel chunks "
        "(exact; for images larger than memory).",
    ),
    memory_budget: Optional[float] = typer.Option(
        None, help="GB one step's working memory may use; picks the tile size."
    ),
    precision: str = typer.Option(
        _NST.precision,
        help="auto (the published arithmetic: tf32 convolutions on CUDA, float32 on the CPU), "
        "float32 (strict), tf32, or bf16 (faster, deviates; see README).",
    ),
    seed: int = typer.Option(_NST.seed, help="Seed of the gray/uniform start."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    reproducible: bool = _reproducible_option(),
) -> None:
    """Give CONTENT tilts the look of the style tilt-series (FakET NST, per tilt).

    Defaults are the published FAKET settings: 1 Adam step of 0.15, content
    relu2_2, style relu1_1..relu5_1 weighted 256:64:16:4:1, max pooling.
    """
    _switch(reproducible)
    import numpy as np

    from .io import MrcWriter, check_output_path, open_mrc, provenance, write_provenance
    from .nst import StyleTransfer, check_stacks, iter_stylize, validate_settings
    from .weights import resolve_weights

    st = _settings(
        NSTSettings,
        content_layers=_ints(content_layers, "--content-layers"),
        content_layer_weights=_floats(content_layer_weights, "--content-layer-weights"),
        style_layers=_ints(style_layers, "--style-layers"),
        style_layer_weights=_floats(style_layer_weights, "--style-layer-weights"),
        content_weight=content_weight,
        tv_weight=tv_weight,
        iterations=iterations,
        initial_iterations=iterations if initial_iterations is None else initial_iterations,
        step_size=step_size,
        avg_decay=avg_decay,
        pooling=pooling,
        min_scale=min_scale,
        end_scale=end_scale,
        init=init if init in INITS else _NST.init,
        seed=seed,
        batch_size=batch_size,
        tile_size=tile_size,
        memory_budget_gb=memory_budget,
        precision=precision,
    )
    validate_settings(st)
    sw = None if style_weights is None else _floats(style_weights, "--style-weights")
    if sw is not None and len(sw) != len(style):
        raise FaketInputError(f"{len(style)} style stacks but {len(sw)} --style-weights")
    check_output_path(output)
    dev = _device(device)
    c = open_mrc(content, role="content")
    ss = [open_mrc(p, role="style") for p in style]
    init_stack = None
    if init not in INITS:
        if not init.lower().endswith(".mrc") and not Path(init).exists():
            raise FaketInputError(f"--init {init!r} is neither a file nor one of {', '.join(INITS)}")
        init_stack = open_mrc(init, role="init")
    check_stacks(
        c.shape,
        [s.shape for s in ss],
        None if init_stack is None else init_stack.shape,
        {"content": str(content), "init": str(init), **{f"style{k}": str(p) for k, p in enumerate(style)}},
    )
    weights = resolve_weights(vgg_weights, seed=weights_seed)
    if not weights.is_imagenet:
        warn(
            f"using {weights.identity['kind']} VGG-19 weights, not ImageNet: the paper's "
            "FAKET_RANDOM ablation lost most of the benefit"
            if weights.identity["kind"] == "random"
            else f"using VGG-19 weights from {weights.identity['path']}"
        )
    transfer = StyleTransfer(weights.state_dict, st, device=dev)
    losses = np.zeros(c.shape[0])
    with (
        MrcWriter(output, c.shape, voxel_size=c.voxel_size[0] or 1.0) as w,
        progress_bar(c.shape[0], "stylize") as advance,
    ):
        for start, images, loss in iter_stylize(
            c.data,
            [s.data for s in ss],
            None if init_stack is None else init_stack.data,
            transfer,
            style_image_weights=sw,
            ranges={
                "content": c.value_range,
                "init": None if init_stack is None else init_stack.value_range,
                **{f"style{k}": s.value_range for k, s in enumerate(ss)},
            },
        ):
            for k, image in enumerate(images):
                w.write(start + k, image)
            losses[start : start + len(images)] = loss
            advance(len(images))
    write_provenance(
        output,
        provenance(
            st.to_dict(),
            inputs={"content": content, "init": init, **{f"style{k}": p for k, p in enumerate(style)}},
            weights=weights.identity,
            seeds={"init": seed, "weights": weights_seed},
            extra={"device": dev, "final_loss_per_tilt": losses.tolist()},
            device=dev,
            precision=st.precision,
        ),
    )
    say(f"{c.shape[0]} tilts -> {output}")


# --------------------------------------------------------------------------- reconstruct
@app.command()
def reconstruct(
    tilts: Path = typer.Argument(..., help="Tilt-series (MRC, n,Y,X)."),
    angles: Path = typer.Option(..., "--angles", help="Tilt angles, IMOD .tlt (degrees)."),
    output: Path = typer.Option(..., "--output", "-o", help="Volume (MRC, Z,Y,X)."),
    filter: str = typer.Option(_REC.filter, help="ramp, shepp-logan, cosine, hann, approxShrec, none."),
    binning: int = typer.Option(_REC.binning, help="Bin projections by this factor first."),
    binning_method: str = typer.Option(_REC.binning_method, help="mean or cubic (spline)."),
    thickness: Optional[int] = typer.Option(None, help="Z size before the crop [default: detector width]."),
    z_range: str = typer.Option(",".join(f"{v:g}" for v in _REC.z_range), help="Fractions LO,HI of Z kept."),
    paper: bool = typer.Option(
        False, "--paper", help="The paper's settings: approxShrec, bin 2 (cubic), Z 0.32226..0.67382."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Weighted back-projection into a float32 volume."""
    from .io import check_output_path, open_mrc, provenance, read_tlt, write_mrc, write_provenance
    from .reconstruction import reconstruct as run_reconstruction
    from .reconstruction import z_slices

    zr = _floats(z_range, "--z-range")
    if len(zr) != 2:
        raise FaketInputError(f"--z-range must be LO,HI, got {z_range!r}")
    st = (
        PAPER_RECONSTRUCTION
        if paper
        else _settings(
            ReconstructionSettings,
            filter=filter,
            binning=binning,
            binning_method=binning_method,
            thickness=thickness,
            z_range=zr,
        )
    )
    check_output_path(output)
    dev = _device(device)
    with open_mrc(tilts, role="tilt-series") as ts:
        theta = read_tlt(angles, expected=ts.shape[0])
        vs = (ts.voxel_size[0] or 1.0) * st.binning
        z_total = len(z_slices(st.thickness or ts.shape[2] // st.binning, st.z_range))
        with progress_bar(z_total, "reconstruct") as advance:
            vol = run_reconstruction(ts.data, theta, st, device=dev, progress=advance)
    write_mrc(output, vol.cpu().numpy(), voxel_size=vs, volume=True)
    write_provenance(
        output,
        provenance(
            {k: v for k, v in st.__dict__.items()}, inputs={"tilts": tilts, "angles": angles}, device=dev
        ),
    )
    say(f"{tuple(vol.shape)} -> {output}")


# --------------------------------------------------------------------------- report
@app.command()
def report(
    run: Optional[Path] = typer.Argument(
        None,
        help="A run folder (e.g. the output of `faket demo`) "
        "holding noiseless/noisy/baseline/faket/reference "
        ".mrc, or a faket run store (Zarr).",
    ),
    tomogram: Optional[str] = typer.Option(None, help="Tomogram of a run store [default: the first]."),
    out_dir: Optional[Path] = typer.Option(
        None, "--out-dir", "-o", help="Report folder [default: RUN/report]."
    ),
    noiseless: Optional[Path] = typer.Option(None, help="Noiseless projections (MRC)."),
    noisy: Optional[Path] = typer.Option(None, help="NOISY tilt-series (MRC)."),
    baseline: Optional[Path] = typer.Option(None, help="BASELINE tilt-series (MRC)."),
    faket: Optional[Path] = typer.Option(None, help="FakET tilt-series (MRC)."),
    reference: Optional[Path] = typer.Option(None, help="Reference tilt-series (MRC)."),
    reconstruction: Optional[Path] = typer.Option(
        None, help="A reconstruction of the FakET tilt-series (MRC)."
    ),
    angles: Optional[Path] = typer.Option(None, help="Tilt angles (.tlt) [default: the run's]."),
    vgg_weights: str = typer.Option(
        "imagenet",
        help="Weights of the style distance: imagenet "
        "(random when missing, with a warning), "
        "random, a file, or none.",
    ),
    style_tilts: int = typer.Option(9, help="Tilts (evenly spaced) used for the style distance."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Realism metrics and pictures: index.html, metrics.json and PNG figures."""
    from .report import (
        TABLE_HEADER,
        ReportInputs,
        check_inputs,
        find_run,
        find_store_tomogram,
        metrics_table,
        write_report,
    )

    if run is not None and (run / "zarr.json").is_file():
        inputs = find_store_tomogram(run, tomogram)
    else:
        inputs = find_run(run) if run is not None else ReportInputs({})
    given = {
        "noiseless": noiseless,
        "noisy": noisy,
        "baseline": baseline,
        "faket": faket,
        "reference": reference,
    }
    inputs.stacks.update({m: p for m, p in given.items() if p is not None})
    if reconstruction is not None:
        inputs.reconstructions["faket"] = reconstruction
    if angles is not None:
        inputs.angles = angles
    if out_dir is None:
        if run is None:
            raise FaketInputError("give --out-dir when no run folder is given")
        out_dir = (run.parent / f"{run.stem}_report") if (run / "zarr.json").is_file() else run / "report"
    if out_dir.exists() and not out_dir.is_dir():
        raise FaketInputError(f"report folder {out_dir} is a file: give a folder")
    n = check_inputs(inputs)
    weights = _report_weights(vgg_weights)
    with progress_bar(n, "report") as advance:
        index = write_report(
            inputs,
            out_dir,
            weights=weights,
            style_tilts=style_tilts,
            device=_device(device),
            progress=advance,
        )
    data = json.loads((out_dir / "metrics.json").read_text())
    _print_table(TABLE_HEADER, metrics_table(data))
    say(f"report -> {index}")


def _report_weights(spec: str):
    from .weights import resolve_weights

    if spec == "none":
        return None
    try:
        return resolve_weights(spec)
    except FaketInputError:
        if spec != "imagenet":
            raise
        warn(
            "ImageNet VGG-19 weights not found: the style distance uses RANDOM weights "
            "(run `faket weights fetch` on a machine with internet for the real measure)"
        )
        return resolve_weights("random")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    t = Table(*header)
    for r in rows:
        t.add_row(*r)
    err_console().print(t)


# --------------------------------------------------------------------------- export
@app.command()
def export(
    store: Path = typer.Argument(..., help="A faket run store (Zarr)."),
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Folder for <tomogram>/<stage>.mrc."),
    tomogram: Optional[List[str]] = typer.Option(None, help="Only these tomograms (repeat)."),
) -> None:
    """Stream a run store to MRC files (+ angles.tlt) per tomogram, one tilt at a time."""
    from .store import export_store

    written = export_store(store, out_dir, tomogram or None)
    say(f"{len(written)} files -> {out_dir}")


# --------------------------------------------------------------------------- weights
@weights_app.command("fetch")
def weights_fetch(
    dest: Optional[Path] = typer.Option(None, help="Where to save [default: torch hub cache]."),
) -> None:
    """Download torchvision's ImageNet VGG-19 file once (hash-checked)."""
    from .weights import fetch_imagenet, hub_checkpoint_path

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
    from .io import sha256_of
    from .weights import load_weights_file

    sd = load_weights_file(path)
    print(f"ok: {len(sd)} tensors, sha256 {sha256_of(path)}")


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo_out"), "--out-dir", "-o", help="Output folder."),
    size: int = typer.Option(96, help="Volume edge in voxels."),
    angles: str = typer.Option("-60,60,3", help="START,STOP,STEP in degrees."),
    vgg_weights: str = typer.Option(
        "imagenet", help="imagenet (falls back to random when missing, loudly), random or a file."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    reproducible: bool = _reproducible_option(),
) -> None:
    """The whole method on built-in synthetic data: phantom -> project -> noise -> stylize -> reconstruct."""
    _switch(reproducible)
    from .demo import run_demo

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


#: Entry-point group of commands that other installed packages add to ``faket``
#: (the Ray engine adds ``faket run``); each entry is a function ``register(app)``.
PLUGIN_GROUP = "faket.commands"


def load_plugins(typer_app: typer.Typer) -> dict:
    """Add the commands of installed plugins; returns their exit codes for typed failures."""
    from importlib.metadata import entry_points

    failures: dict = {}
    for ep in entry_points(group=PLUGIN_GROUP):
        failures.update(ep.load()(typer_app) or {})
    return failures


def main() -> None:
    """Console entry point of ``faket``."""
    failures = load_plugins(app)
    run_app(app, "faket", failures)


if __name__ == "__main__":
    main()
