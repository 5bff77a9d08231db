"""Fast reads and writes of the run store's done flags (a part of faket.store).

A stage's done flags are an ``(n,)`` uint8 array of one-element chunks: one small file per
tilt (bytes, then zstd), so that every worker writes only its own tilts' files. zarr-python
spends about 1.5 ms of Python per flag read or written (6-7 ms for a task's 4 flags, 40 ms
for a 61-tilt stack's, on a 2-core VM), holding Python's lock all along: in a GPU actor,
time its launching thread waits. Here each flag's file is read or written directly: a
missing file is the fill value (0), a file is decoded with the array's own zstd settings,
and a flag is set by putting the codec's bytes for 1 in place with one rename. Any other
layout, or a file that does not decode to one byte, is left to zarr (its values, its
errors); tests compare the two.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._shards import _folder, _write_atomic, per_array


@per_array
def _layout(arr: Any) -> tuple[str, Any, bytes] | None:
    """The flag array's folder, its zstd codec (numcodecs) and the codec's bytes for 1 when it
    has the layout of faket's done flags; None for anything else (zarr reads and writes it)."""
    try:
        from numcodecs import Zstd
        from zarr.codecs import BytesCodec, ZstdCodec
        from zarr.storage import LocalStore

        m = arr.metadata
        kinds = [type(c) for c in m.codecs]
        encode = m.chunk_key_encoding.encode_chunk_key
        if not (
            isinstance(arr.store, LocalStore)
            and arr.ndim == 1
            and tuple(m.chunk_grid.chunk_shape) == (1,)
            and str(arr.dtype) == "uint8"
            and kinds == [BytesCodec, ZstdCodec]
            and int(m.fill_value) == 0
            and encode((0,)) == "c/0"
            and encode((12,)) == "c/12"
        ):
            return None
        settings = m.codecs[1]
        zstd = Zstd(level=settings.level, checksum=settings.checksum)
        return _folder(arr), zstd, bytes(zstd.encode(np.ones(1, np.uint8)))
    except Exception:  # an attribute this zarr version names otherwise: zarr's own path
        return None


def read_flags(arr: Any, tilts: Sequence[int] | None = None) -> np.ndarray:
    """Flags ``tilts`` (default: all) of a done-flag array: uint8 ``(len(tilts),)``, zarr's values."""
    idx = range(arr.shape[0]) if tilts is None else [int(i) for i in tilts]
    layout = _layout(arr)
    if layout is None:
        return np.asarray(arr[:] if tilts is None else arr.oindex[list(idx)], np.uint8)
    folder, zstd, one = layout
    out = np.zeros(len(idx), np.uint8)
    for k, i in enumerate(idx):
        try:
            with open(f"{folder}/c/{i}", "rb") as f:
                data = f.read()
        except FileNotFoundError:  # never set, or cleared: the fill value
            continue
        value = 1 if data == one else _decoded(zstd, data)
        out[k] = value if value is not None else np.asarray(arr[i])  # zarr's value, or its error
    return out


def _decoded(zstd: Any, data: bytes) -> int | None:
    try:
        raw = zstd.decode(data)
    except Exception:  # not a zstd frame: zarr's error
        return None
    return raw[0] if len(raw) == 1 else None


def set_flags(arr: Any, tilts: Sequence[int]) -> None:
    """Set flags ``tilts`` of a done-flag array to 1 (idempotent; each flag file is put whole)."""
    idx = [int(i) for i in tilts]
    layout = None if arr.store.read_only else _layout(arr)
    if layout is None:
        arr.oindex[idx] = 1
        return
    folder, _, one = layout
    for i in idx:
        _write_atomic(f"{folder}/c/{i}", [one])
