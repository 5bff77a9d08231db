"""The run store verifies what it trusts: a done flag counts only if its data exists and decodes.

Tilt stacks keep one shard per tilt with CRC32C checksums (of the shard index and of each
tile), so a deleted tilt is a missing object and a truncated or altered one fails to decode.
A tilt whose index and chunk checksums all hold is sound without decoding it (damage in
storage breaks a checksum; :func:`faket._shards.tilt_sound`); any other is read by zarr,
whose error names the damage. :func:`verify_group` finds both; :func:`clear_problems`
resets their done flags (and those of the volumes made from them), so that the next run of
the spec recomputes them.
"""

from __future__ import annotations

import functools
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._shards import tilt_sound
from .errors import FaketInputError
from .store import STAGES, VOLUMES, done_mask, has_volume, reset_done, volume


@dataclass(frozen=True)
class Problem:
    """One thing the store says is done but cannot deliver."""

    tomogram: str
    array: str
    index: int | None  # the tilt; None for a volume or a whole flag array
    why: str

    def __str__(self) -> str:
        where = f"{self.tomogram}/{self.array}" + ("" if self.index is None else f" tilt {self.index}")
        return f"{where}: {self.why}"


def _exists(arr, coords: tuple[int, ...]) -> bool:
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    key = f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"
    store = arr.store_path.store
    if isinstance(store, LocalStore):  # a file: no trip through zarr's event loop
        return (Path(store.root) / key).is_file()
    return bool(sync(store.exists(key)))


def _decode_error(read) -> str | None:
    try:
        read()
    except Exception as err:  # zarr and its codecs raise many types for damaged bytes
        text = "checksum mismatch" if "checksum" in str(err) else f"{type(err).__name__}: {str(err)[:60]}"
        return f"corrupt ({text})"
    return None


def _tilt_problem(arr, i: int, decode: bool = True) -> str | None:
    if decode and tilt_sound(arr, i):  # every checksum holds: what storage damage would break
        return None
    if not _exists(arr, (i, 0, 0)):
        return "missing (its data was deleted)"
    return _decode_error(lambda: arr[i]) if decode else None


def _volume_problem(arr) -> str | None:
    grid = [range(math.ceil(s / c)) for s, c in zip(arr.shape, arr.chunks)]
    if not all(_exists(arr, c) for c in itertools.product(*grid)):
        return "missing (part of its data was deleted)"
    return _decode_error(lambda: arr[:])


def _flags(group, name: str) -> tuple[np.ndarray, Problem | None]:
    try:
        return done_mask(group, name), None
    except Exception as err:
        n = group[name].shape[0] if name not in VOLUMES and name in group else 1
        return np.zeros(n, bool), Problem(group.basename, f"done_{name}", None, f"flags corrupt ({err})")


def verify_group(
    group, decode: bool = True, workers: int = 8, arrays: tuple[str, ...] = (*STAGES, *VOLUMES)
) -> list[Problem]:
    """Every done tilt and volume of one tomogram (of ``arrays``) that is missing or does not decode.

    decode: also read every done tilt (its checksums); else only check that it exists.
    """
    problems: list[Problem] = []
    name = group.basename
    for stage in arrays:
        if not (has_volume(group, stage) if stage in VOLUMES else stage in group):
            continue
        mask, flag_problem = _flags(group, stage)
        if flag_problem is not None:
            problems.append(flag_problem)
        arr = volume(group, stage) if stage in VOLUMES else group[stage]
        if stage in VOLUMES:
            why = _volume_problem(arr) if mask.all() else None
            problems += [Problem(name, stage, None, why)] if why else []
            continue
        done = [int(i) for i in np.flatnonzero(mask)]
        with ThreadPoolExecutor(workers) as pool:  # decoding releases the GIL
            whys = list(pool.map(functools.partial(_tilt_problem, arr, decode=decode), done))
        problems += [Problem(name, stage, i, why) for i, why in zip(done, whys) if why]
    return problems


def verify_store(root, names: list[str] | None = None, decode: bool = True) -> list[Problem]:
    """:func:`verify_group` over the tomograms of a store (or ``names``)."""
    from .store import tomograms

    return [p for n in names or tomograms(root) for p in verify_group(root[n], decode)]


def _delete(arr, coords: tuple[int, ...] | None) -> None:
    """Delete a damaged tilt's shard (or, ``None``, all of a volume's chunks): zarr reads what
    it overwrites, so a damaged object must go before it can be written again."""
    from zarr.core.sync import sync

    store = arr.store_path.store
    if coords is None:
        sync(store.delete_dir(f"{arr.path}/c"))
    else:
        sync(store.delete(f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"))


def clear_problems(root, problems: list[Problem]) -> None:
    """Reset the done flags of damaged tilts and volumes (deleting their data), and the
    flags of the volumes made from them, so that the next run of the spec redoes them."""
    for p in problems:
        g = root[p.tomogram]
        stage = p.array.removeprefix("done_")
        if p.array.startswith("done_"):
            _delete(g[p.array], None)  # flags that do not decode: all "not done"
        elif p.index is None:
            reset_done(g, stage)
            _delete(volume(g, stage), None)
        else:
            g[f"done_{stage}"][p.index] = 0
            _delete(g[stage], (p.index, 0, 0))
        if stage == "faket" and "done_reconstruction" in g:
            reset_done(g, "reconstruction")


def _copy_tilt(arr, out: np.ndarray, i: int) -> None:
    out[i] = arr[i]


def read_tilts(group, stage: str) -> np.ndarray:
    """A whole tilt stack, tilt by tilt; a damaged tilt is one line naming it (exit 2)."""
    arr = group[stage]
    out = np.empty(arr.shape, dtype=arr.dtype)
    for i in range(arr.shape[0]):
        # each tilt is read once: the read is the decode check
        why = _tilt_problem(arr, i, decode=False) or _decode_error(functools.partial(_copy_tilt, arr, out, i))
        if why is not None:
            problem = Problem(group.basename, stage, i, why)
            raise FaketInputError(f"{problem}: run `faket store verify --repair` on the store")
    return out
