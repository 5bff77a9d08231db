"""Settings of every stage, with the published defaults in one place.

The defaults are the paper's "FAKET" row (Harar et al., arXiv 2304.02011, and
``docs/faket-method.md``). Every CLI option reads its default from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Layer indices of torchvision's VGG-19 ``features`` stack: relu1_1 .. relu5_1.
PUBLISHED_STYLE_LAYERS: tuple[int, ...] = (1, 6, 11, 20, 29)
#: Relative weights of the style layers (normalised by the sum of |w|).
PUBLISHED_STYLE_WEIGHTS: tuple[float, ...] = (256.0, 64.0, 16.0, 4.0, 1.0)
#: Content layer relu2_2 and its weight (normalised to 1).
PUBLISHED_CONTENT_LAYERS: tuple[int, ...] = (8,)
PUBLISHED_CONTENT_WEIGHTS: tuple[float, ...] = (100.0,)

POOLINGS = ("max", "average", "l2")
INITS = ("content", "gray", "uniform")
PRECISIONS = ("float32", "tf32", "bf16")


@dataclass(frozen=True)
class ProjectionSettings:
    """Noiseless projection (method section 1).

    dose: value the ray sums are subtracted from (``dose - radon``); 0 in the paper.
    detector_width: detector pixels along X; ``None`` = the volume's X width.
    """

    dose: float = 0.0
    detector_width: int | None = None


@dataclass(frozen=True)
class NoiseSettings:
    """Noise model (method section 2).

    order: polynomial order of the per-tilt curves over the tilt index
        (-1 raw, 0 constant, 2 in the paper).
    content_sigma_factor: sigma scale for the CONTENT tilt-series (paper 0.25).
    """

    order: int = 2
    content_sigma_factor: float = 0.25


#: Edge of the Zarr store's tilt chunks (pixels). NST tiles cut each chunk into
#: equal parts or are whole chunks, so that every chunk edge is a tile edge.
TILE_GRID = 1024


@dataclass(frozen=True)
class NSTSettings:
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
    precision: ``float32`` (default, exact to the published code), or the faster
        opt-in modes ``tf32`` (GPU convolutions and matmuls in TF32) and ``bf16``
        (network passes under bfloat16 autocast; losses in float32).
    """

    content_layers: tuple[int, ...] = PUBLISHED_CONTENT_LAYERS
    content_layer_weights: tuple[float, ...] = PUBLISHED_CONTENT_WEIGHTS
    style_layers: tuple[int, ...] = PUBLISHED_STYLE_LAYERS
    style_layer_weights: tuple[float, ...] = PUBLISHED_STYLE_WEIGHTS
    content_weight: float = 1.0
    tv_weight: float = 0.0
    iterations: int = 1
    initial_iterations: int = 1
    step_size: float = 0.15
    avg_decay: float = 0.99
    pooling: str = "max"
    min_scale: int | None = None
    end_scale: int | None = None
    init: str = "content"
    seed: int = 0
    batch_size: int = 1
    tile_size: int | None = None
    memory_budget_gb: float | None = None
    precision: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ReconstructionSettings:
    """Weighted back-projection (method section 4).

    filter: ``ramp``, ``shepp-logan``, ``cosine``, ``hann``, ``approxShrec`` or ``none``.
    binning: integer binning of the projections before reconstruction (paper: 2).
    binning_method: ``mean`` (block average) or ``cubic`` (cubic spline, the paper's).
    thickness: Z size of the volume before the crop; ``None`` = detector width (cubic).
    z_range: fractions of Z kept (paper: 0.32226 .. 0.67382 of a cubic volume).
    """

    filter: str = "ramp"
    binning: int = 1
    binning_method: str = "mean"
    thickness: int | None = None
    z_range: tuple[float, float] = (0.0, 1.0)


#: The paper's reconstruction settings, for ``--paper``.
PAPER_RECONSTRUCTION = ReconstructionSettings(
    filter="approxShrec", binning=2, binning_method="cubic", z_range=(0.32226, 0.67382)
)


@dataclass(frozen=True)
class PhantomSettings:
    """Synthetic labelled specimen and its physics-lite reference tilt-series.

    size: edge of the cubic volume in voxels; pixel_size in Angstrom.
    n_particles: particles placed (classes cycle over the built-in shapes).
    defocus_um: defocus of the contrast transfer function, micrometres underfocus.
    dose_per_tilt: electrons per square Angstrom per tilt (shot noise).
    """

    size: int = 128
    pixel_size: float = 10.0
    n_particles: int = 40
    seed: int = 0
    angles: tuple[float, float, float] = (-60.0, 60.0, 3.0)
    voltage_kv: float = 300.0
    defocus_um: float = 3.0
    amplitude_contrast: float = 0.07
    dose_per_tilt: float = 2.0
