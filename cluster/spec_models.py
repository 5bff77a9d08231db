"""The run spec's sections as typed settings (pydantic): types, ranges and defaults in one place.

``faket spec schema`` prints :class:`SpecFile`'s JSON schema; ``faket_cluster.spec``
checks the keys against these models and resolves paths and inputs.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from faket.settings import Bool, Float, Int, NSTSettings, ReconstructionSettings, Settings, Str


class Resources(Settings):
    """``[resources]``: actors, their resources, batching, queueing and the retry policy."""

    actors: Optional[Annotated[Int, Field(ge=1)]] = None
    gpus_per_actor: Annotated[Float, Field(ge=0)] = 0.0
    cpus_per_actor: Annotated[Float, Field(gt=0)] = 1.0
    batch: Optional[Annotated[Int, Field(ge=1)]] = None  # tilts per task; None: chosen per run
    in_flight: Annotated[Int, Field(ge=1)] = 3  # one computing, two read ahead (prefetched)
    max_task_retries: Annotated[Int, Field(ge=0)] = 3
    retry_backoff: Annotated[Float, Field(ge=0)] = 0.5
    address: Optional[Str] = None
    spread: Bool = False
    share_style: Annotated[Int, Field(ge=1)] = 8
    device: Literal["auto", "cpu", "cuda"] = "auto"


class RunSection(Settings):
    section = "run"

    store: Str
    export: Optional[Str] = None
    seed: Int = 0


class WeightsSection(Settings):
    section = "weights"

    vgg: Str = "imagenet"
    seed: Int = 0


class NoisePair(Settings):
    section = "noise.pairs"

    reference: Str
    noiseless: Str


class NoiseSection(Settings):
    section = "noise"

    model: Optional[Str] = None
    pairs: list[NoisePair] = []
    order: Annotated[Int, Field(ge=-1, le=5)] = 2
    content_sigma: Annotated[Float, Field(ge=0)] = 0.25


class StyleSection(Settings):
    section = "style"

    reference: Optional[Str] = None
    pool: list[Str] = []


class _Sources(Settings):
    """The input files of a tomogram entry (paths relative to the spec file)."""

    name: Optional[Str] = None
    volume: Optional[Str] = None
    tilts: Optional[Str] = None
    angles: Optional[Str] = None
    labels: Optional[Str] = None
    particles: Optional[Str] = None
    #: electrons per square Angstrom per tilt, for exports that record it (IMOD's .mdoc)
    dose_per_tilt: Optional[Annotated[Float, Field(ge=0)]] = None


class TomogramEntry(_Sources):
    section = "tomogram"

    seed: Optional[Int] = None


class ManifestEntry(_Sources):
    section = "manifest"

    seeds: list[Int] = [0]
    styles: Optional[list[Str]] = None


class SpecFile(Settings):
    """A whole run spec (TOML) as typed data; ``faket spec schema`` prints its JSON schema."""

    section = ""

    run: RunSection
    resources: Resources = Resources()
    weights: WeightsSection = WeightsSection()
    noise: NoiseSection = NoiseSection()
    style: StyleSection = StyleSection()
    nst: NSTSettings = NSTSettings()
    reconstruction: Optional[ReconstructionSettings] = None
    tomogram: list[TomogramEntry] = []
    manifest: list[ManifestEntry] = []
