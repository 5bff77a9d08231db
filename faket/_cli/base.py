"""The CLI's typer apps, shared options and argument parsers (commands live beside)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from ..errors import FaketInputError
from ..reproducible import HELP as REPRODUCIBLE_HELP
from ..settings import (
    NoiseSettings,
    NSTSettings,
    PhantomSettings,
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


def _angles_option() -> Path:
    return typer.Option(..., "--angles", help="Tilt angles, IMOD .tlt (degrees).")


def _overwrite_option() -> bool:
    return typer.Option(False, "--overwrite", help="Replace outputs that exist (never the command's inputs).")


def _switch(on: bool) -> None:
    """Apply ``--reproducible`` before anything imports torch."""
    if on:
        from ..reproducible import enable

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
_OPTIONS = {
    "memory_budget_gb": "--memory-budget",
    "defocus_um": "--defocus",
    "dose_per_tilt": "--dose",
    "content_sigma_factor": "--content-sigma",
}


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
