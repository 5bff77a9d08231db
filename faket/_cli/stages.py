"""Commands of the method's stages on files: stylize, reconstruct."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..console import progress_bar, say, warn
from ..errors import FaketInputError
from ..settings import (
    INITS,
    PAPER_RECONSTRUCTION,
    NSTSettings,
    ReconstructionSettings,
)
from .base import (
    _NST,
    _REC,
    _angles_option,
    _device,
    _floats,
    _ints,
    _overwrite_option,
    _reproducible_option,
    _settings,
    _switch,
    app,
)


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
        None,
        "--memory-budget",
        "--max-memory",
        help="GB one step's working memory may use; picks the tile size.",
    ),
    precision: str = typer.Option(
        _NST.precision,
        help="auto (the published arithmetic: tf32 convolutions on CUDA, float32 on the CPU), "
        "float32 (strict), tf32, or bf16 (faster, deviates; see README).",
    ),
    seed: int = typer.Option(_NST.seed, help="Seed of the gray/uniform start."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    reproducible: bool = _reproducible_option(),
    overwrite: bool = _overwrite_option(),
) -> None:
    """Give CONTENT tilts the look of the style tilt-series (FakET NST, per tilt).

    Defaults are the published FAKET settings: 1 Adam step of 0.15, content
    relu2_2, style relu1_1..relu5_1 weighted 256:64:16:4:1, max pooling.
    """
    _switch(reproducible)
    import numpy as np

    from ..io import MrcWriter, check_output_path, open_mrc
    from ..nst import StyleTransfer, check_stacks, iter_stylize, validate_settings
    from ..provenance import provenance, write_provenance
    from ..weights import resolve_weights

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
    check_output_path(
        output,
        inputs={
            "content": content,
            "style": style,
            "init": None if init in INITS else init,
            "weights": None if vgg_weights in ("imagenet", "random") else vgg_weights,
        },
        overwrite=overwrite,
    )
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
            extra={
                "device": dev,
                "final_loss_per_tilt": losses.tolist(),
                "memory_fallbacks": transfer.memory_fallbacks,
            },
            device=dev,
            precision=st.precision,
        ),
    )
    say(f"{c.shape[0]} tilts -> {output}")


# --------------------------------------------------------------------------- reconstruct
@app.command()
def reconstruct(
    tilts: Path = typer.Argument(..., help="Tilt-series (MRC, n,Y,X)."),
    angles: Path = _angles_option(),
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
    overwrite: bool = _overwrite_option(),
) -> None:
    """Weighted back-projection into a float32 volume."""
    from ..io import check_output_path, open_mrc, read_tlt, write_mrc
    from ..provenance import provenance, write_provenance
    from ..reconstruction import check_angle_spread, output_shape
    from ..reconstruction import reconstruct as run_reconstruction

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
    check_output_path(output, inputs={"tilts": tilts, "angles": angles}, overwrite=overwrite)
    dev = _device(device)
    with open_mrc(tilts, role="tilt-series") as ts:
        theta = read_tlt(angles, expected=ts.shape[0])
        check_angle_spread(theta, f"angles {angles}")  # before the progress bar starts
        vs = (ts.voxel_size[0] or 1.0) * st.binning
        z_total = output_shape((ts.shape[0], ts.shape[1], ts.shape[2]), st)[
            0
        ]  # refuses a binning that leaves no pixels
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
