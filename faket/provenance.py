"""Provenance: what made an output file, recorded in ``<output>.json`` beside it, and the
SHA-256 of inputs (large ones remembered by path, size and time in the user cache)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from ._json import dumps
from ._paths import atomic_path


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a large file, remembered by (real path, size, mtime) in the user cache.

    The cache is ``$XDG_CACHE_HOME/faket/sha256.json`` (default ``~/.cache``);
    a changed file is hashed again. Falls back to hashing when the cache is
    not writable.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "faket" / "sha256.json"
    try:
        table = json.loads(cache.read_text())
    except (OSError, ValueError):
        table = {}
    if key in table:
        return table[key]
    digest = sha256_of(p)
    table = {k: v for k, v in table.items() if not k.startswith(f"{p}|")}
    table[key] = digest
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps(table))
    except OSError:
        pass
    return digest


def provenance(
    parameters: dict,
    *,
    inputs: dict | None = None,
    weights: dict | None = None,
    seeds: dict | None = None,
    extra: dict | None = None,
    device: str = "cpu",
    precision: str | None = None,
) -> dict:
    """A provenance record: faket version, command line, parameters, inputs, weights, seeds,
    and ``compute``: the device, CPU kernel level, precision mode, reproducible switch and
    torch / CUDA versions (:func:`faket.reproducible.compute_record`)."""
    import torch

    from .reproducible import compute_record

    rec = {
        "faket_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "host": platform.node(),
        "parameters": parameters,
        "inputs": {k: str(v) for k, v in (inputs or {}).items()},
        "compute": compute_record(device, precision),
    }
    if weights is not None:
        rec["weights"] = weights
    if seeds is not None:
        rec["seeds"] = seeds
    if extra:
        rec.update(extra)
    return rec


def provenance_path(output: str | os.PathLike) -> Path:
    """Where the provenance of ``output`` is kept: ``<output>.json`` beside it."""
    p = Path(output)
    return p.with_name(p.name + ".json")


def write_provenance(output: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` as JSON next to ``output``, atomically."""
    target = provenance_path(output)
    with atomic_path(target) as tmp:
        tmp.write_text(dumps(record, indent=2) + "\n")
    return target
