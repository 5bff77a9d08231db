"""Settings of every stage, typed and validated, with the published defaults in one place.

The defaults are the paper's "FAKET" row (Harar et al., arXiv 2304.02011). Every
CLI option and every run-spec key reads its default and its allowed values from
here, so the command line and the spec cannot disagree. The models are frozen
pydantic models: a bad value (wrong type, out of range, unknown name) raises
:class:`~faket.errors.FaketInputError` with one line naming the key, the value
and what is allowed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from .errors import FaketInputError

#: Layer indices of torchvision's VGG-19 ``features`` stack: relu1_1 .. relu5_1.
PUBLISHED_STYLE_LAYERS: tuple[int, ...] = (1, 6, 11, 20, 29)
#: Relative weights of the style layers (normalised by the sum of |w|).
PUBLISHED_STYLE_WEIGHTS: tuple[float, ...] = (256.0, 64.0, 16.0, 4.0, 1.0)
#: Content layer relu2_2 and its weight (normalised to 1).
PUBLISHED_CONTENT_LAYERS: tuple[int, ...] = (8,)
PUBLISHED_CONTENT_WEIGHTS: tuple[float, ...] = (100.0,)

INITS = ("content", "gray", "uniform")
PRECISIONS = ("auto", "float32", "tf32", "bf16")
FILTERS = ("ramp", "shepp-logan", "cosine", "hann", "approxShrec", "none")

#: Edge of the Zarr store's tilt chunks (pixels). NST tiles cut each chunk into
#: equal parts or are whole chunks, so that every chunk edge is a tile edge.
TILE_GRID = 1024

# Strict scalars: "2" is not an integer and true is not a number (TOML and JSON give types).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


def describe_error(err: ValidationError, where: str = "") -> str:
    """One line for the first problem of a validation error: key, value, what is allowed."""
    first = err.errors()[0]
    inner = first.get("ctx", {}).get("error")
    if first["type"] == "value_error" and isinstance(inner, FaketInputError):
        return str(inner)  # a nested settings model already said it in one line
    key = ".".join(str(p) for p in first["loc"]) or "value"
    shown = f"{where}{'.' if where else ''}{key}"
    if first["type"] == "missing":
        return f"{shown} is missing"
    if first["type"] == "extra_forbidden":
        return f"unknown key {shown}"
    return f"{shown} = {first.get('input')!r}: {first['msg'].replace('Input should be', 'must be')}"


class Settings(BaseModel):
    """Frozen settings; bad values raise :class:`FaketInputError` with one line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: How messages name this model's keys (``nst.step_size``); default: from the class name.
    section: ClassVar[Optional[str]] = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            where = _snake(type(self).__name__) if self.section is None else self.section
            raise FaketInputError(describe_error(err, where)) from None

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (tuples stay tuples)."""
        return self.model_dump()


def _snake(name: str) -> str:
    """``NSTSettings`` -> ``nst``, ``ReconstructionSettings`` -> ``reconstruction``."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name.removesuffix("Settings")).lower()


class ProjectionSettings(Settings):
    """Noiseless projection (method section 1).

    dose: value the ray sums are subtracted from (``dose - radon``); 0 in the paper.
    detector_width: detector pixels along X; ``None`` = the volume's X width.
    """

    dose: Annotated[Float, Field(ge=0)] = 0.0
    detector_width: Optional[Annotated[Int, Field(ge=1)]] = None


class NoiseSettings(Settings):
    """Noise model (method section 2).

    order: polynomial order of the per-tilt curves over the tilt index
        (-1 raw, 0 constant, 2 in the paper).
    content_sigma_factor: sigma scale for the CONTENT tilt-series (paper 0.25).
    """

    order: Annotated[Int, Field(ge=-1, le=5)] = 2
    content_sigma_factor: Annotated[Float, Field(ge=0)] = 0.25


class GivenNoise(Settings):
    """Noise given by hand instead of estimated (``faket noise apply --snr | --r --sigma``).

    r: Pearson correlation of a noisy tilt with its noiseless projection, in (0, 1].
    sigma: residual standard deviation (>= 0). snr: signal over noise power (> 0).
    """

    r: Optional[Annotated[Float, Field(gt=0, le=1)]] = None
    sigma: Optional[Annotated[Float, Field(ge=0)]] = None
    snr: Optional[Annotated[Float, Field(gt=0)]] = None


class NSTSettings(Settings):
    """Neural style transfer (method section 3); defaults are the published ones.

    min_scale/end_scale: longest image side in pixels at the first/last scale of
    the pyramid; ``None`` = the image size (one scale, as in the paper).
    init: ``content``, ``gray`` or ``uniform`` when no start stack is given.
    batch_size: tilts per network call (speed only).
    tile_size: compute in tiles of at most this many pixels (multiples of 16, lined
        up with ``TILE_GRID`` chunks) with a halo of context; exact up to
        round-off, for images too large for memory.
    memory_budget_gb: pick the tile size so that one step's working memory stays
        under this many GB.
    precision: ``auto`` (default: the published code's arithmetic, which is
        ``tf32`` on CUDA and ``float32`` on the CPU or under the reproducible
        switch), ``float32`` (strict), ``tf32`` (cuDNN convolutions in TF32,
        PyTorch's default on CUDA, and TF32 Gram matmuls) or ``bf16`` (network passes under bfloat16
        autocast; losses in float32).
    """

    content_layers: tuple[Int, ...] = PUBLISHED_CONTENT_LAYERS
    content_layer_weights: tuple[Float, ...] = PUBLISHED_CONTENT_WEIGHTS
    style_layers: tuple[Int, ...] = PUBLISHED_STYLE_LAYERS
    style_layer_weights: tuple[Float, ...] = PUBLISHED_STYLE_WEIGHTS
    content_weight: Annotated[Float, Field(ge=0)] = 1.0
    tv_weight: Annotated[Float, Field(ge=0)] = 0.0
    iterations: Annotated[Int, Field(ge=1)] = 1
    initial_iterations: Annotated[Int, Field(ge=1)] = 1
    step_size: Annotated[Float, Field(gt=0)] = 0.15
    avg_decay: Annotated[Float, Field(ge=0, lt=1)] = 0.99
    pooling: Literal["max", "average", "l2"] = "max"
    min_scale: Optional[Annotated[Int, Field(ge=1)]] = None
    end_scale: Optional[Annotated[Int, Field(ge=1)]] = None
    init: Literal["content", "gray", "uniform"] = "content"
    seed: Int = 0
    batch_size: Annotated[Int, Field(ge=1)] = 1
    tile_size: Optional[Annotated[Int, Field(ge=16)]] = None
    memory_budget_gb: Optional[Annotated[Float, Field(gt=0)]] = None
    precision: Literal["auto", "float32", "tf32", "bf16"] = "auto"


class ReconstructionSettings(Settings):
    """Weighted back-projection (method section 4).

    filter: ``ramp``, ``shepp-logan``, ``cosine``, ``hann``, ``approxShrec`` or ``none``.
    binning: integer binning of the projections before reconstruction (paper: 2).
    binning_method: ``mean`` (block average) or ``cubic`` (cubic spline, the paper's).
    thickness: Z size of the volume before the crop; ``None`` = detector width (cubic).
    z_range: fractions of Z kept (paper: 0.32226 .. 0.67382 of a cubic volume).
    """

    filter: Literal["ramp", "shepp-logan", "cosine", "hann", "approxShrec", "none"] = "ramp"
    binning: Annotated[Int, Field(ge=1)] = 1
    binning_method: Literal["mean", "cubic"] = "mean"
    thickness: Optional[Annotated[Int, Field(ge=1)]] = None
    z_range: tuple[Annotated[Float, Field(ge=0, le=1)], Annotated[Float, Field(ge=0, le=1)]] = (0.0, 1.0)

    @field_validator("z_range")
    @classmethod
    def _z_range_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not lo < hi:
            raise ValueError(f"z range must satisfy 0 <= lo < hi <= 1, got {lo}, {hi}")
        return value


#: The paper's reconstruction settings, for ``--paper``.
PAPER_RECONSTRUCTION = ReconstructionSettings(
    filter="approxShrec", binning=2, binning_method="cubic", z_range=(0.32226, 0.67382)
)


class PhantomSettings(Settings):
    """Synthetic labelled specimen and its physics-lite reference tilt-series.

    size: edge of the cubic volume in voxels; pixel_size in Angstrom.
    n_particles: particles placed (classes cycle over the built-in shapes).
    defocus_um: defocus of the contrast transfer function, micrometres underfocus.
    dose_per_tilt: electrons per square Angstrom per tilt (shot noise).
    """

    size: Annotated[Int, Field(ge=16)] = 128
    pixel_size: Annotated[Float, Field(gt=0)] = 10.0
    n_particles: Annotated[Int, Field(ge=0)] = 40
    seed: Int = 0
    angles: tuple[Float, Float, Float] = (-60.0, 60.0, 3.0)
    voltage_kv: Annotated[Float, Field(gt=0)] = 300.0
    defocus_um: Float = 3.0
    amplitude_contrast: Annotated[Float, Field(ge=0, le=1)] = 0.07
    dose_per_tilt: Annotated[Float, Field(ge=0)] = 2.0
