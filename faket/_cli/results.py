"""Commands on results: report, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..console import err_console, progress_bar, say, warn
from ..errors import FaketInputError
from .base import (
    _device,
    _overwrite_option,
    app,
)


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
    style_tilts: int = typer.Option(9, min=1, help="Tilts (evenly spaced) used for the style distance."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    overwrite: bool = _overwrite_option(),
) -> None:
    """Realism metrics and pictures: index.html, metrics.json and PNG figures."""
    from .._report_render import TABLE_HEADER, metrics_table
    from ..io import check_output_dir
    from ..report import ReportInputs, check_inputs, find_run, find_store_tomogram, write_report

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
    n = check_inputs(inputs)
    sources = [
        p
        for p in (*inputs.stacks.values(), *inputs.reconstructions.values(), inputs.angles, run)
        if isinstance(p, (str, Path)) and Path(p).is_file()  # files; a store's arrays are not
    ]
    check_output_dir(out_dir, role="report folder", inputs={"report": sources}, overwrite=overwrite)
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
    from ..weights import resolve_weights

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
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Folder to write (replaced whole)."),
    format: str = typer.Option(
        "mrc", "--format", "-f", help="mrc, imod, relion, deepfinder, copick or portal (see README)."
    ),
    tomogram: Optional[List[str]] = typer.Option(None, help="Only these tomograms (repeat)."),
    overwrite: bool = _overwrite_option(),
) -> None:
    """Export a run store for a tool: MRC, IMOD, RELION, DeepFinder, copick or the Data Portal."""
    from ..export import export_store

    written = export_store(store, out_dir, tomogram or None, fmt=format, overwrite=overwrite)
    say(f"{len(written)} files -> {out_dir}")


store_app = typer.Typer(no_args_is_help=True, help="Run stores: check what they hold.")
app.add_typer(store_app, name="store")


@store_app.command("verify")
def store_verify(
    store: Path = typer.Argument(..., help="A faket run store (Zarr)."),
    repair: bool = typer.Option(
        False, "--repair", help="Mark the damaged tilts not done and recompute them (reruns the spec)."
    ),
) -> None:
    """List every done tilt, volume or flag whose data is missing or corrupt (exit 1 if any)."""
    import subprocess
    import sys

    from ..store import open_store
    from ..store_check import clear_problems, verify_store

    root = open_store(store, mode="r" if not repair else "a")
    problems = verify_store(root)
    for p in problems:
        print(p)
    if not problems:
        say(f"{store}: every done tilt and volume is present and decodes")
        return
    if not repair:
        say(f"{len(problems)} problem(s); `faket store verify {store} --repair` recomputes them")
        raise typer.Exit(1)
    spec = Path(str(root.attrs.get("spec_path", "")))
    if not spec.is_file():
        raise FaketInputError(
            f"the spec that made {store} ({spec}) is gone: the damaged tilts cannot be recomputed"
        )
    clear_problems(root, problems)
    say(f"{len(problems)} problem(s) marked not done; recomputing them with `faket run {spec}`")
    done = subprocess.run([sys.executable, "-m", "faket.cli", "run", str(spec)], check=False)
    raise typer.Exit(done.returncode)
