"""The driver's side of the run store: every array laid out up front, each stage's settings.

Before any task runs, the driver creates every array and done flag of every
tomogram (workers only write), and compares the settings each stage ran with
(recorded in the tomogram group's ``settings`` attribute) to the spec's. A
resume with other settings is refused, naming the changed keys, unless the
stage is restarted on purpose (``--restart-stage``), which clears the done
flags of that stage and every later one. Tomograms made from the same source share one copy of
their noiseless stack, tomograms styled by the same file one of its style stack (:func:`holders`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from faket.errors import FaketInputError
from faket.pipeline import Stage
from faket.store import SHARED_STACKS, changed_settings, create_stack, create_volume, reset_done

from .spec import RunSpec, TomogramSpec

#: NST settings that change only speed or memory (and float round-off), not the method:
#: they may differ between a run and its resume.
EXECUTION_KEYS = ("batch_size", "tile_size", "memory_budget_gb")


def _file_id(path: Path | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    return f"{p} ({p.stat().st_size} bytes)" if p.exists() else str(p)


def stage_settings(spec: RunSpec, tomo: TomogramSpec, weights_identity: dict) -> dict[Stage, dict]:
    """What each stage of one tomogram is computed from: inputs and settings, as plain JSON."""
    from faket.io import read_tlt

    noise = (
        {"model": _file_id(spec.noise_model)}
        if spec.noise_model is not None
        else {"pairs": [[_file_id(a), _file_id(b)] for a, b in spec.noise_pairs]}
    )
    prepare = {
        "source": _file_id(tomo.volume or tomo.tilts),
        "labels": _file_id(tomo.labels),
        "angles": [float(a) for a in read_tlt(tomo.angles)],
        "seed": tomo.seed,
        "style": _file_id(tomo.style),
        "noise": noise,
        "noise_order": spec.noise_order,
        "content_sigma": spec.content_sigma,
    }
    nst = {k: v for k, v in spec.nst.to_dict().items() if k not in EXECUTION_KEYS}
    weights = {k: weights_identity.get(k) for k in ("kind", "sha256", "seed") if k in weights_identity}
    out = {Stage.PREPARE: prepare, Stage.STYLIZE: json.loads(json.dumps({**nst, "weights": weights}))}
    if spec.reconstruction is not None:
        out[Stage.RECONSTRUCT] = json.loads(json.dumps(spec.reconstruction.__dict__))
    return out


def fingerprint(settings: dict) -> str:
    """A short hash of a stage's settings (shown in the run summary)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def holders(root, spec: RunSpec) -> dict[str, dict[str, str]]:
    """Each tomogram of the spec, and for each of its shared stacks (noiseless, style) the
    tomogram whose group holds it: itself, or the first tomogram of the spec made from the same
    source and angles (noiseless) or styled by the same file (style), a file being its path,
    size and shape. A group that holds a copy already (an earlier run's) keeps it; a tomogram
    shares only with one in the spec, so that the copy is prepared by this run where it is not
    done."""
    from faket.io import read_tlt

    def file_key(path, shape) -> tuple:
        p = Path(path).resolve()
        return str(p), p.stat().st_size if p.exists() else None, tuple(shape)

    def keys(t: TomogramSpec) -> dict[str, tuple]:
        kind, source = ("volume", t.volume) if t.volume is not None else ("tilts", t.tilts)
        angles = tuple(float(a) for a in read_tlt(t.angles))
        return {
            "noiseless": (kind, file_key(source, t.shape), angles),
            "style": file_key(t.style, t.style_shape),
        }

    key = {t.name: keys(t) for t in spec.tomograms}
    out: dict[str, dict[str, str]] = {t.name: {} for t in spec.tomograms}
    for stack in SHARED_STACKS:
        holds = {t.name for t in spec.tomograms if t.name in root and stack in root[t.name]}
        first: dict[tuple, str] = {}
        for t in spec.tomograms:
            if t.name in holds:
                first.setdefault(key[t.name][stack], t.name)
        for t in spec.tomograms:
            out[t.name][stack] = t.name if t.name in holds else first.setdefault(key[t.name][stack], t.name)
    return out


def _create_arrays(g, spec: RunSpec, tomo: TomogramSpec, held: dict[str, str]) -> None:
    shapes = {"noiseless": tomo.shape, "style": tomo.style_shape}
    for stack in ("noisy", "content", "faket"):
        create_stack(g, stack, tomo.shape)
    for stack, by in held.items():
        if by == tomo.name:
            create_stack(g, stack, shapes[stack])
    elsewhere = {stack: by for stack, by in held.items() if by != tomo.name}
    if elsewhere:
        g.attrs["held_by"] = elsewhere
    elif "held_by" in g.attrs:
        del g.attrs["held_by"]
    if tomo.labels_shape is not None:
        create_volume(g, "labels", tomo.labels_shape)
    if spec.reconstruction is not None:
        from faket.reconstruction import output_shape

        create_volume(g, "reconstruction", output_shape(tomo.shape, spec.reconstruction))


def check_resume(root, spec: RunSpec, weights_identity: dict, restart: Stage | None = None) -> None:
    """Refuse a resume whose settings differ from the store's, before anything is written."""
    redo = set(restart.and_later()) if restart is not None else set()
    for tomo in spec.tomograms:
        if tomo.name not in root:
            continue
        recorded = root[tomo.name].attrs.get("settings", {})
        for stage, now in stage_settings(spec, tomo, weights_identity).items():
            old = recorded.get(stage.value)
            if old is None or stage in redo:
                continue
            changed = changed_settings(old, now)
            if changed:
                shown = ", ".join(f"{k} {old.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
                raise FaketInputError(
                    f"store {spec.store}: tomogram {tomo.name} was made with other {stage.value} "
                    f"settings ({shown}{', ...' if len(changed) > 4 else ''}): rerun with the "
                    f"recorded settings, use a new store, or redo it with --restart-stage {stage.value}"
                )


def lay_out(root, spec: RunSpec, weights_identity: dict, restart: Stage | None = None) -> None:
    """Create every tomogram's arrays and flags, record settings; clear what a restart redoes."""
    check_resume(root, spec, weights_identity, restart)
    redo = restart.and_later() if restart is not None else []
    held = holders(root, spec)
    for tomo in spec.tomograms:
        g = root.require_group(tomo.name)
        _create_arrays(g, spec, tomo, held[tomo.name])
        for stage in redo:
            for name in stage.arrays:
                reset_done(g, name)
        now = stage_settings(spec, tomo, weights_identity)
        g.attrs["settings"] = {s.value: v for s, v in now.items()}
        g.attrs["fingerprints"] = {s.value: fingerprint(v) for s, v in now.items()}
