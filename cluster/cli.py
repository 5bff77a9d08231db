"""The engine's command line: ``faket run SPEC`` (a ``faket`` plugin) and ``python -m faket_cluster``.

faket run SPEC.toml [--address ray://... | auto] [--actors N] [--reproducible]
faket spec schema [-o FILE] | faket spec check SPEC.toml
python -m faket_cluster run SPEC.toml        (the same)
python -m faket_cluster demo [--out-dir demo_out] [--tomograms 2] [--size 64]
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from faket._json import dumps
from faket.console import interrupt_exit_code
from faket.errors import Interrupted
from faket.reproducible import HELP as REPRODUCIBLE_HELP

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="FakET at cluster scale: Ray actors, Zarr stores, MRC export.",
)


def _run(
    spec_path: Path, address: Optional[str], actors: Optional[int], restart: Optional[str] = None
) -> dict:
    from faket.console import err_console, progress_bar

    from .engine import run
    from .spec import load_spec

    stage = _stage(restart)
    spec = load_spec(spec_path)
    console = err_console()
    return run(
        spec,
        address=address,
        actors=actors,
        restart=stage,
        say=lambda m: console.print(m, highlight=False),
        progress=lambda total, done: progress_bar(total, "stylize (all tilts)", completed=done),
    )


def _interrupted_line(spec_path: Path) -> str:
    """How far an interrupted run got (read from its store), and how to go on."""
    from faket.store import done_mask, open_store

    from .spec import load_spec

    try:
        spec = load_spec(spec_path)
        root = open_store(spec.store, mode="r")
        masks = [done_mask(root[t.name], "faket") for t in spec.tomograms if t.name in root]
        done, total = sum(int(m.sum()) for m in masks), sum(t.shape[0] for t in spec.tomograms)
    except Exception:  # the store may not exist yet: interrupted while laying it out
        return "interrupted before any tilt was done; rerun the same command to resume"
    return f"interrupted: {done} of {total} tilts done; rerun the same command to resume"


def _stage(name: Optional[str]):
    from faket.errors import FaketInputError
    from faket.pipeline import Stage

    if name is None:
        return None
    allowed = [s.value for s in Stage if s is not Stage.EXPORT]
    if name not in allowed:
        raise FaketInputError(f"--restart-stage {name!r} is not a stage: use one of {', '.join(allowed)}")
    return Stage(name)


def run_cmd(
    spec: Path = typer.Argument(..., help="Run spec (TOML)."),
    address: Optional[str] = typer.Option(
        None, help="Ray cluster address [default: RAY_ADDRESS or a local Ray]."
    ),
    actors: Optional[int] = typer.Option(None, min=1, help="Override resources.actors (>= 1)."),
    reproducible: bool = typer.Option(False, "--reproducible", help=REPRODUCIBLE_HELP),
    summary_file: Optional[Path] = typer.Option(
        None, "--summary", help="Write the JSON summary to this file instead of stdout."
    ),
    restart_stage: Optional[str] = typer.Option(
        None,
        help="Redo this stage and every later one on purpose (prepare, stylize, "
        "reconstruct), e.g. after changing its settings.",
    ),
) -> None:
    """Simulate everything a run spec lists on Ray; rerun the same spec to resume."""
    from .engine import raise_if_failed

    if reproducible:  # before torch is imported here or in any actor
        from faket.reproducible import enable

        enable()
    _stage(restart_stage)  # a bad stage name ends here, before any work
    # Ray's own messages (e.g. "(raylet) A worker died ...") go to stderr: stdout carries
    # only the JSON summary, so `faket run SPEC > summary.json` stays valid JSON.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            summary = _run(spec, address, actors, restart_stage)
        except KeyboardInterrupt:
            raise Interrupted(interrupt_exit_code(), _interrupted_line(spec)) from None
        finally:
            import ray

            ray.shutdown()  # the local Ray a driver started ends with it
    text = dumps(summary)
    if summary_file is not None:
        from faket.io import atomic_path

        with atomic_path(summary_file) as tmp:
            tmp.write_text(text + "\n")
    else:
        print(text)
    raise_if_failed(summary)


def demo(
    out_dir: Path = typer.Option(Path("demo_out"), "--out-dir", "-o", help="Output folder."),
    tomograms: int = typer.Option(2, min=1, help="Tomograms to simulate."),
    size: int = typer.Option(64, min=16, help="Volume edge in voxels (>= 16)."),
    actors: int = typer.Option(2, min=1, help="CPU actors."),
    vgg_weights: str = typer.Option(
        "imagenet", help="imagenet (random when missing, loudly), random or a file."
    ),
) -> None:
    """The built-in demo through the engine: phantoms -> spec -> Ray run -> MRC export -> report."""
    from faket.console import say

    from .demo import run_demo

    run_demo(
        out_dir, tomograms=tomograms, size=size, actors=actors, vgg_weights=vgg_weights, runner=_run, say=say
    )


spec_app = typer.Typer(no_args_is_help=True, help="Run specs: their JSON schema, and checking one.")


@spec_app.command("schema")
def spec_schema(
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Write the schema to this file [default: stdout]."
    ),
) -> None:
    """The JSON schema of a run spec (types, ranges, allowed values, published defaults)."""
    from .spec import SpecFile

    text = json.dumps(SpecFile.model_json_schema(), indent=1) + "\n"
    if output is None:
        print(text, end="")
        return
    from faket.io import atomic_path

    with atomic_path(output) as tmp:
        tmp.write_text(text)


@spec_app.command("check")
def spec_check(spec: Path = typer.Argument(..., help="Run spec (TOML).")) -> None:
    """Validate a spec without running anything: keys, values, files, shapes, tilt counts, GPUs."""
    from .spec import check_local_gpus, load_spec

    s = load_spec(spec)
    check_local_gpus(s)
    tilts = sum(t.shape[0] for t in s.tomograms)
    print(f"ok: {spec}: {len(s.tomograms)} tomogram(s), {tilts} tilts, store {s.store}")


app.command("run")(run_cmd)
app.command("demo")(demo)
app.add_typer(spec_app, name="spec")


def _failures() -> dict:
    from .engine import RunFailed

    return {RunFailed: 1}


def register(faket_app: typer.Typer) -> dict:
    """The ``faket.commands`` plugin: adds ``faket run`` and ``faket spec``; returns typed failures."""
    faket_app.command("run")(run_cmd)
    faket_app.add_typer(spec_app, name="spec")
    return _failures()


def main() -> None:
    """``python -m faket_cluster``."""
    from faket.console import run_app

    run_app(app, "faket-cluster", _failures())
