"""Run specs: one TOML file that lists what to simulate, validated before any work.

Example (paths are relative to the spec file)::

    [run]
    store = "out/run.zarr"        # one Zarr store per run
    export = "out/mrc"            # optional: MRC + .tlt per tomogram afterwards

    [resources]
    actors = 2                    # NST actors (default: one per GPU, else 2 CPU actors)
    gpus_per_actor = 0
    cpus_per_actor = 1
    batch = 4                     # tilts per task (default: chosen per run); also the NST batch
    share_style = 8               # tomograms with the same style per task (its Grams computed once)
    in_flight = 3                 # tasks queued per actor: one computing, two read ahead
    device = "auto"               # auto | cpu | cuda: where actors compute
    max_task_retries = 3          # retries after the first attempt, for any fault
    retry_backoff = 0.5           # seconds before the first retry, doubled after each

    [weights]
    vgg = "imagenet"              # imagenet | random | a file

    [noise]
    model = "noise.json"          # or: pairs = [{reference = "...", noiseless = "..."}]
    order = 2

    [style]
    reference = "reference.mrc"   # or: pool = ["a.mrc", "b.mrc"] drawn per tomogram with the seed

    [nst]                         # any faket.settings.NSTSettings field
    step_size = 0.15

    [reconstruction]              # optional
    filter = "ramp"

    [[tomogram]]
    name = "tomo_000"
    volume = "volume.mrc"         # a labelled density volume (projected), or
    # tilts = "noiseless.mrc"     # a ready noiseless tilt-series
    angles = "angles.tlt"
    labels = "labels.mrc"         # optional, copied into the store
    particles = "particles.csv"   # optional
    seed = 1                      # noise seed

    [[manifest]]                  # optional: many tomograms x styles x seeds from one entry
    volume = "volume.mrc"
    angles = "angles.tlt"
    seeds = [1, 2, 3]
    styles = ["ref_a.mrc", "ref_b.mrc"]   # optional; default: drawn from [style]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from faket.errors import FaketInputError
from faket.settings import (
    NSTSettings,
    ReconstructionSettings,
    describe_error,
)

from .spec_models import (
    ManifestEntry,
    NoiseSection,
    Resources,
    RunSection,
    SpecFile,
    StyleSection,
    TomogramEntry,
    WeightsSection,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Allowed keys of each table, from the typed models (one place for names and defaults).
SECTIONS = set(SpecFile.model_fields)
RUN_KEYS = set(RunSection.model_fields)
RESOURCE_KEYS = set(Resources.model_fields)
WEIGHT_KEYS = set(WeightsSection.model_fields)
NOISE_KEYS = set(NoiseSection.model_fields)
STYLE_KEYS = set(StyleSection.model_fields)
TOMO_KEYS = set(TomogramEntry.model_fields)
MANIFEST_KEYS = set(ManifestEntry.model_fields)


@dataclass
class TomogramSpec:
    name: str
    angles: Path
    volume: Path | None = None
    tilts: Path | None = None
    labels: Path | None = None
    particles: Path | None = None
    seed: int = 0
    dose_per_tilt: float | None = None  # e/A^2 per tilt, when known
    style: Path | None = None  # resolved from [style]
    # Filled in when the spec is checked, so that the driver lays out the store up front:
    shape: tuple[int, int, int] = (0, 0, 0)  # (n, Y, W) of the tilt-series
    style_shape: tuple[int, int, int] = (0, 0, 0)
    labels_shape: tuple[int, int, int] | None = None


@dataclass
class RunSpec:
    path: Path
    store: Path
    export: Path | None
    seed: int
    resources: Resources
    weights: str
    weights_seed: int
    noise_model: Path | None
    noise_pairs: list[tuple[Path, Path]]
    noise_order: int
    content_sigma: float
    nst: NSTSettings
    reconstruction: ReconstructionSettings | None
    tomograms: list[TomogramSpec] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


def _fail(spec: Path, msg: str) -> FaketInputError:
    return FaketInputError(f"spec {spec}: {msg}")


def _check_keys(spec: Path, where: str, table: dict, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(spec, f"unknown key {unknown[0]!r} in [{where}] (allowed: {', '.join(sorted(allowed))})")


def _file(spec: Path, value, what: str) -> Path:
    if not isinstance(value, str):
        raise _fail(spec, f"{what} must be a path string")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else (spec.parent / p)
    if not p.exists():
        raise _fail(spec, f"{what} {p} does not exist")
    return p.resolve()


def _out(spec: Path, value) -> Path:
    p = Path(str(value)).expanduser()
    return (p if p.is_absolute() else spec.parent / p).resolve()


def validate_file(spec: Path, raw: dict) -> SpecFile:
    """Types, ranges and names of every key of a parsed spec; one line for the first problem."""
    try:
        return SpecFile.model_validate(raw)
    except ValidationError as err:
        raise _fail(spec, describe_error(err)) from None


def load_spec(path: str | Path) -> RunSpec:
    """Parse and validate a run spec; every problem is one FaketInputError line."""
    spec = Path(path)
    if not spec.is_file():
        raise FaketInputError(f"spec {spec} does not exist: check the path")
    try:
        raw = tomllib.loads(spec.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise _fail(spec, f"is not valid TOML ({err})") from None
    _check_keys(spec, "top level", raw, SECTIONS)
    run = raw.get("run", {})
    _check_keys(spec, "run", run, RUN_KEYS)
    if "store" not in run:
        raise _fail(spec, '[run] needs store = "path/to/run.zarr"')
    res_raw = raw.get("resources", {})
    _check_keys(spec, "resources", res_raw, RESOURCE_KEYS)
    for where, allowed in (
        ("weights", WEIGHT_KEYS),
        ("noise", NOISE_KEYS),
        ("style", STYLE_KEYS),
        ("nst", set(NSTSettings.model_fields)),
        ("reconstruction", set(ReconstructionSettings.model_fields)),
    ):
        _check_keys(spec, where, raw.get(where, {}), allowed)
    typed = validate_file(spec, {**raw, "nst": {"batch_size": res_raw.get("batch", 1), **raw.get("nst", {})}})
    res = typed.resources
    w = raw.get("weights", {})
    vgg = w.get("vgg", "imagenet")
    if vgg not in ("imagenet", "random"):
        vgg = str(_file(spec, vgg, "weights.vgg"))
    noise = raw.get("noise", {})
    model = _file(spec, noise["model"], "noise.model") if "model" in noise else None
    pairs = [
        (
            _file(spec, p.get("reference"), "noise.pairs reference"),
            _file(spec, p.get("noiseless"), "noise.pairs noiseless"),
        )
        for p in noise.get("pairs", [])
    ]
    if model is None and not pairs:
        raise _fail(spec, '[noise] needs model = "noise.json" or pairs = [{reference=..., noiseless=...}]')
    style = raw.get("style", {})
    pool = (
        [_file(spec, style["reference"], "style.reference")]
        if "reference" in style
        else [_file(spec, p, "style.pool entry") for p in style.get("pool", [])]
    )
    if not pool:
        raise _fail(spec, '[style] needs reference = "reference.mrc" or pool = [...]')
    from faket.nst import validate_settings

    try:
        validate_settings(typed.nst)
    except FaketInputError as err:
        raise _fail(spec, f"[nst]: {err}") from None
    nst = typed.nst
    rec = typed.reconstruction
    if rec is not None:
        from faket.reconstruction import check_settings

        try:
            check_settings(rec)
        except FaketInputError as err:
            raise _fail(spec, f"[reconstruction]: {err}") from None
    seed = int(run.get("seed", 0))
    tomos = _tomograms(spec, raw, pool, seed)
    s = RunSpec(
        spec.resolve(),
        _out(spec, run["store"]),
        _out(spec, run["export"]) if "export" in run else None,
        seed,
        res,
        vgg,
        int(w.get("seed", 0)),
        model,
        pairs,
        int(noise.get("order", 2)),
        float(noise.get("content_sigma", 0.25)),
        nst,
        rec,
        tomos,
        raw,
    )
    _check_shapes(s)
    return s


def _tomograms(spec: Path, raw: dict, pool: list[Path], seed: int) -> list[TomogramSpec]:
    import random

    entries = []
    for t in raw.get("tomogram", []):
        _check_keys(spec, "[tomogram]", t, TOMO_KEYS)
        entries.append(dict(t))
    for k, m in enumerate(raw.get("manifest", [])):
        _check_keys(spec, "[manifest]", m, MANIFEST_KEYS)
        base = m.get("name", f"m{k}")
        styles = m.get("styles", [None])
        for j, style in enumerate(styles):
            for sd in m.get("seeds", [0]):
                e = {key: v for key, v in m.items() if key not in ("seeds", "name", "styles")}
                tag = f"_st{j}" if len(styles) > 1 else ""
                entries.append(e | {"name": f"{base}{tag}_s{sd}", "seed": sd, "_style": style})
    if not entries:
        raise _fail(spec, "no [[tomogram]] or [[manifest]] entries: nothing to simulate")
    rng = random.Random(seed)
    out, names = [], set()
    for k, e in enumerate(entries):
        name = str(e.get("name", f"tomo_{k:03d}"))
        if name in names:
            raise _fail(spec, f"tomogram name {name!r} is used twice")
        names.add(name)
        if ("volume" in e) == ("tilts" in e):
            raise _fail(spec, f"tomogram {name}: give exactly one of volume or tilts")
        if "angles" not in e:
            raise _fail(spec, f'tomogram {name}: angles = "file.tlt" is missing')
        out.append(
            TomogramSpec(
                name=name,
                angles=_file(spec, e["angles"], f"tomogram {name} angles"),
                volume=_file(spec, e["volume"], f"tomogram {name} volume") if "volume" in e else None,
                tilts=_file(spec, e["tilts"], f"tomogram {name} tilts") if "tilts" in e else None,
                labels=_file(spec, e["labels"], f"tomogram {name} labels") if "labels" in e else None,
                particles=_file(spec, e["particles"], f"tomogram {name} particles")
                if "particles" in e
                else None,
                seed=int(e.get("seed", k)),
                dose_per_tilt=e.get("dose_per_tilt"),
                style=(
                    _file(spec, e["_style"], f"tomogram {name} style")
                    if e.get("_style")
                    else pool[rng.randrange(len(pool))]
                ),
            )
        )
    return out


def _shape3(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_shapes(s: RunSpec) -> None:
    """Tilt counts of angles, inputs, styles and the noise model must agree; images must fit."""
    from faket.io import open_mrc, read_tlt
    from faket.noise import NoiseModel

    n_model = NoiseModel.load(s.noise_model).n_tilts if s.noise_model else None
    for t in s.tomograms:
        source = t.volume or t.tilts
        assert source is not None  # exactly one of them, checked when read
        with open_mrc(
            source,
            role=f"tomogram {t.name} {'volume' if t.volume else 'tilts'}",
            check_finite=False,
        ) as src:
            shape = src.shape
        angles = read_tlt(t.angles)
        n = len(angles)
        if s.reconstruction is not None:  # checked now, not after hours of NST
            from faket.reconstruction import check_angle_spread

            try:
                check_angle_spread(angles, f"tomogram {t.name}: angles {t.angles}")
            except FaketInputError as err:
                raise _fail(s.path, str(err)) from None
        if t.tilts is not None and shape[0] != n:
            raise _fail(
                s.path,
                f"tomogram {t.name}: tilts {t.tilts} has {shape[0]} tilts but angles {t.angles} has {n}",
            )
        size = (shape[1], shape[2])
        t.shape = (n, shape[1], shape[2])
        if t.labels is not None:
            with open_mrc(t.labels, role=f"tomogram {t.name} labels", check_finite=False) as lab:
                t.labels_shape = _shape3(lab.shape)
        if s.reconstruction is not None:
            from faket.reconstruction import output_shape

            try:
                output_shape(t.shape, s.reconstruction)
            except FaketInputError as err:
                raise _fail(s.path, f"tomogram {t.name}: [reconstruction]: {err}") from None
        assert t.style is not None  # resolved from [style] when read
        with open_mrc(t.style, role="style", check_finite=False) as st:
            t.style_shape = _shape3(st.shape)
            if st.shape[0] != n:
                raise _fail(
                    s.path,
                    f"tomogram {t.name}: style {t.style} has {st.shape[0]} tilts but "
                    f"the angles give {n}: use a reference with the same tilt scheme",
                )
        if n_model is not None and n_model != n:
            raise _fail(
                s.path,
                f"tomogram {t.name}: noise model {s.noise_model} has {n_model} tilts but the angles give {n}",
            )
        if min(size) < 16:
            raise _fail(s.path, f"tomogram {t.name}: images of {size} are too small (>= 16 pixels)")


def check_local_gpus(s: RunSpec) -> None:
    """Refuse GPUs asked of a local run (no cluster address) on a machine without CUDA."""
    import os

    res = s.resources
    if res.address or os.environ.get("RAY_ADDRESS"):
        return  # the cluster's GPUs are checked when the run connects
    wants = res.gpus_per_actor > 0 or res.device == "cuda"
    if wants:
        import torch

        if torch.cuda.device_count() == 0:
            key = "gpus_per_actor" if res.gpus_per_actor > 0 else "device"
            value = res.gpus_per_actor if res.gpus_per_actor > 0 else '"cuda"'
            raise _fail(
                s.path,
                f"resources.{key} = {value} but this machine has no CUDA GPU: use "
                'gpus_per_actor = 0 and device = "cpu", or give the cluster\'s address',
            )
