"""The built-in demo through the Ray engine: a few phantoms, a spec, a run, MRC files, a report."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from faket.errors import FaketInputError


def write_inputs(out: Path, tomograms: int, size: int, angles=(-60.0, 60.0, 3.0)) -> Path:
    """Phantoms (reference seed 0, specimens 1..N), their files, and a spec; returns the spec path."""
    from faket.io import angles_range, write_mrc, write_tlt
    from faket.phantom import make_phantom, reference_tilt_series, write_particles_csv
    from faket.projection import project
    from faket.settings import PhantomSettings

    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    theta = angles_range(*angles)
    write_tlt(inputs / "angles.tlt", theta)
    n_particles = max(8, int(40 * (size / 128) ** 2))
    ref_st = PhantomSettings(size=size, n_particles=n_particles, seed=0, angles=angles)
    ref = make_phantom(ref_st)
    write_mrc(inputs / "reference.mrc", reference_tilt_series(ref, theta, ref_st), voxel_size=ref.pixel_size)
    write_mrc(
        inputs / "reference_noiseless.mrc", project(ref.density, theta).numpy(), voxel_size=ref.pixel_size
    )
    entries = []
    for k in range(tomograms):
        ph = make_phantom(PhantomSettings(size=size, n_particles=n_particles, seed=k + 1, angles=angles))
        name = f"tomo_{k:03d}"
        write_mrc(inputs / f"{name}_volume.mrc", ph.density, voxel_size=ph.pixel_size, volume=True)
        write_mrc(
            inputs / f"{name}_labels.mrc", ph.labels.astype(np.float32), voxel_size=ph.pixel_size, volume=True
        )
        write_particles_csv(inputs / f"{name}_particles.csv", ph.particles)
        entries.append(f'''
[[tomogram]]
name = "{name}"
volume = "inputs/{name}_volume.mrc"
labels = "inputs/{name}_labels.mrc"
particles = "inputs/{name}_particles.csv"
angles = "inputs/angles.tlt"
dose_per_tilt = {PhantomSettings().dose_per_tilt}
seed = {k + 1}
''')
    spec = out / "demo.toml"
    spec.write_text(
        f"""# The built-in demo: {tomograms} synthetic tomograms styled like a physics-lite
# reference.
[run]
store = "run.zarr"
export = "mrc"

[resources]
batch = 1
in_flight = 2

[weights]
vgg = "imagenet"

[noise]
pairs = [{{reference = "inputs/reference.mrc", noiseless = "inputs/reference_noiseless.mrc"}}]
order = 2

[style]
reference = "inputs/reference.mrc"

[reconstruction]
filter = "ramp"
z_range = [0.25, 0.75]
"""
        + "".join(entries)
    )
    return spec


def run_demo(
    out_dir: Path,
    *,
    tomograms: int,
    size: int,
    actors: int,
    vgg_weights: str,
    runner: Callable,
    say: Callable[[str], None],
) -> dict:
    from faket.weights import resolve_weights

    if size < 32 or tomograms < 1:
        raise FaketInputError("demo needs size >= 32 and at least one tomogram")
    out_dir = Path(out_dir)
    say(f"[1/3] writing {tomograms} phantom(s) and a spec into {out_dir}")
    spec = write_inputs(out_dir, tomograms, size)
    weights = vgg_weights
    if vgg_weights == "imagenet":
        try:
            resolve_weights("imagenet", with_sha256=False)
        except FaketInputError as err:
            say(f"WARNING: {err}")
            say(
                "WARNING: ImageNet VGG-19 weights are NOT available: this demo runs with RANDOM "
                "weights, which the paper found much less realistic. Run `faket weights fetch` on a "
                "machine with internet for real results."
            )
            weights = "random"
    text = spec.read_text().replace('vgg = "imagenet"', f'vgg = "{weights}"')
    text = text.replace("batch = 1", f"batch = 1\nactors = {actors}")
    spec.write_text(text)
    say("[2/3] running the spec on Ray (local CPU actors here)")
    summary = runner(spec, None, None)
    say("[3/3] report of the first tomogram")
    from faket.report import ReportInputs, write_report

    first = out_dir / "mrc" / "tomo_000"
    index = write_report(
        ReportInputs(
            {
                "noiseless": first / "noiseless.mrc",
                "noisy": first / "noisy.mrc",
                "faket": first / "faket.mrc",
                "reference": first / "style.mrc",
            },
            {"faket": first / "reconstruction.mrc"},
            first / "angles.tlt",
        ),
        out_dir / "report",
        weights=resolve_weights(weights, with_sha256=False),
    )
    rate = summary.get("tilts_per_second")
    say(
        f"done: {summary['tilts']} tilts with {summary['actors']} actor(s)"
        + (f", {rate:.2f} tilts/s" if rate else "")
    )
    say(f"  zarr store  {summary['store']}")
    say(f"  MRC files   {out_dir / 'mrc'}/<tomogram>/(faket|noisy|content|noiseless|reconstruction).mrc")
    say(f"  report      {index}")
    return summary
