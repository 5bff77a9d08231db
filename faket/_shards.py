"""Fast reads and writes of whole tilts in the run store's shards (a part of faket.store).

A tilt stack ``(n, H, W)`` keeps each tilt in one Zarr v3 shard of 1024^2 chunks
(bytes, Blosc, CRC32C; the shard index at the end, CRC32C-checked). zarr-python
decodes such a shard in about 240 ms per 4096^2 tilt here; reading each chunk
with pread and decoding it on threads (Blosc, and CRC32C with the ``crc32c``
package, run without Python's lock) takes a fraction of that. Anything else (another layout, a
missing shard or chunk, a checksum that does not match) is left to zarr, so
the values and the errors are zarr's own: this is only a faster path to the
same bytes, and tests compare the two. Writes encode the chunks on threads
and put the shard in place with one rename, so a reader or a crash never meets
half a tilt; zarr reads them back bit for bit (tested).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import numpy as np
from numcodecs import Blosc

try:
    from crc32c import crc32c as _crc32c
except ImportError:  # zarr's own checksum package (holds Python's lock: see _checksum)
    from google_crc32c import value as _crc32c

_BLOSC = Blosc(cname="lz4", clevel=1, shuffle=Blosc.SHUFFLE)  # the tilt stacks' chunks (see _lz4_shuffle)
_INDEX_ENTRY = 16  # (offset, nbytes) as little-endian uint64
_CRC = 4
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_local = threading.local()  # each shard thread's scratch buffers (see _scratch)
_alone = {"on": False}  # chunks coded in the calling thread (see code_chunks_in_caller)
T = TypeVar("T")


def _threads() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="faket-shard")
        return _pool


def _each(work: Callable[[int], T], n: int) -> list[T]:
    """``work(k)`` for k in ``range(n)``: on the shard threads, or here for one chunk (a tilt of
    1024^2 or less), which spares the hand-over to a thread and back (each takes Python's lock),
    and for every chunk in a process that keeps to one core (:func:`code_chunks_in_caller`)."""
    if n == 1 or _alone["on"]:
        return [work(k) for k in range(n)]
    return list(_threads().map(work, range(n)))


def code_chunks_in_caller(alone: bool = True) -> None:
    """From now on this process encodes and decodes a tilt's chunks in the thread that reads or
    writes it, not on the shard threads: for a process that is one of many working side by side
    (:mod:`faket._procs`' pools, one per core but those left to the rest of the machine), where
    each one's shard threads would take the cores left to others. ``alone=False``: the shard
    threads again (``benchmarks/diag/pool_cores.py`` compares the two)."""
    _alone["on"] = alone


def per_array(find: Callable[[Any], T]) -> Callable[[Any], T]:
    """``find(arr)`` of a zarr array, worked out once per array: kept by its metadata object
    (zarr's metadata is immutable; a reopened array gets a new one) and its path."""
    cache: dict[tuple[int, str], tuple[Any, T]] = {}
    lock = threading.Lock()

    def cached(arr: Any) -> T:
        meta = arr.metadata
        key = (id(meta), f"{getattr(arr.store, 'root', '')}/{arr.path}")
        with lock:
            hit = cache.get(key)
        if hit is not None and hit[0] is meta:  # the same metadata, not an id used again
            return hit[1]
        found = find(arr)
        with lock:
            if len(cache) > 4096:
                cache.clear()
            cache[key] = (meta, found)
        return found

    return cached


@per_array
def _layout(arr: Any) -> tuple[str, tuple[int, int]] | None:
    """The array's folder and chunk (rows, cols) when it has the tilt layout this reader knows."""
    try:
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.storage import LocalStore

        m = arr.metadata
        (sharding,) = m.codecs
        if not (isinstance(arr.store, LocalStore) and isinstance(sharding, ShardingCodec) and arr.ndim == 3):
            return None
        shard = tuple(m.chunk_grid.chunk_shape)
        inner = tuple(sharding.chunk_shape)
        sides = zip(shard[1:], arr.shape[1:], inner[1:])
        whole = shard[0] == 1 and all(s >= n and s % c == 0 for s, n, c in sides)
        kinds = [type(c) for c in sharding.codecs]
        index_kinds = [type(c) for c in sharding.index_codecs]
        if not (
            whole
            and kinds == [BytesCodec, BloscCodec, Crc32cCodec]
            and index_kinds == [BytesCodec, Crc32cCodec]
            and _little(sharding.codecs[0])
            and _little(sharding.index_codecs[0])
            and _name(sharding.index_location) == "end"
            and str(arr.dtype) == "float32"
            and m.chunk_key_encoding.encode_chunk_key((0, 0, 0)) == "c/0/0/0"
            and sharding.chunk_shape[0] == 1
        ):
            return None
        return _folder(arr), (int(sharding.chunk_shape[1]), int(sharding.chunk_shape[2]))
    except Exception:  # an attribute this zarr version names otherwise: the slow path
        return None


def _little(codec: Any) -> bool:
    """Whether a bytes codec stores little-endian values (what this module decodes and encodes)."""
    return _name(getattr(codec, "endian", None)) == "little"


def _name(setting: Any) -> Any:
    """A codec setting's name: zarr up to 3.1 keeps enums (``Endian.little``), later ones strings."""
    return getattr(setting, "value", setting)


def _checksum(data: Any) -> int:
    """The CRC32C of a bytes-like object, as zarr's ``crc32c`` codec computes it.

    The ``crc32c`` package computes it without Python's lock for buffers of 32 KiB and more, and
    3.5x faster than ``google_crc32c`` (zarr's), which holds the lock: in a GPU actor, the
    thread that launches the NST's kernels waited for the reading threads' checksums (9% of
    the lock's samples, py-spy, engine_feed.py --kernel launch at 1024^2). ``google_crc32c``
    stays the fallback where ``crc32c`` is not installed.
    """
    return int(_crc32c(data))


def _crc_ok(blob: bytes) -> bool:
    return _checksum(blob[:-_CRC]) == int.from_bytes(blob[-_CRC:], "little")


def read_tilt(arr: Any, index: int, out: np.ndarray | None = None) -> np.ndarray:
    """Tilt ``index`` of a tilt stack as float32 ``(H, W)``: zarr's values, decoded faster.

    arr: a zarr array of the run store's tilt layout (any other array is read by zarr);
    out: an ``(H, W)`` float32 array to decode into (e.g. one tilt of a batch: no copy).
    """
    if out is None:
        out = np.empty(arr.shape[1:], np.float32)
    layout, fd = _open_shard(arr, index)
    if fd is not None and layout is not None:
        try:
            if _decode_shard(fd, out, *layout[1]):
                return out
        finally:
            os.close(fd)
    out[...] = np.asarray(arr[index])  # zarr reads, and names any damage
    return out


def _folder(arr: Any) -> str:
    """A local zarr array's folder, as a string (pathlib's joins hold Python's lock: the actor's
    reading and writing threads paid for them)."""
    return os.path.join(str(arr.store.root), arr.path)


def _shard_path(folder: str, index: int) -> str:
    """The file of tilt ``index``'s shard in a tilt stack's folder."""
    return f"{folder}/c/{int(index)}/0/0"


def _open_shard(arr: Any, index: int) -> tuple[tuple[str, tuple[int, int]] | None, int | None]:
    """(the array's tilt layout or None, an open file descriptor of tilt ``index``'s shard, or
    None where the layout is another or the shard was never written: zarr's fill value)."""
    layout = _layout(arr)
    if layout is None:
        return None, None
    try:
        return layout, os.open(_shard_path(layout[0], index), os.O_RDONLY)
    except FileNotFoundError:
        return layout, None


def tilt_sound(arr: Any, index: int) -> bool | None:
    """Whether tilt ``index``'s shard is whole and every checksum in it holds (its index's and
    each chunk's), read without decoding: True, or False where zarr's read would find more to
    say (damage, or an empty chunk); None where the array has another layout or the shard
    is missing."""
    layout, fd = _open_shard(arr, index)
    if fd is None or layout is None:
        return None
    try:
        (cy, cx), (h, w) = layout[1], arr.shape[1:]
        entries = _shard_entries(fd, (-(-h // cy), -(-w // cx)))
        if entries is None:
            return False
        return all(_chunk_bytes(fd, entries, k) is not None for k in range(len(entries)))
    finally:
        os.close(fd)


def _shard_entries(fd: int, grid: tuple[int, int]) -> np.ndarray | None:
    """An open shard file's index, ``(chunks, 2)`` (offset, bytes); None if the index's checksum
    does not hold, a chunk is empty (all fill value) or an entry points outside the file."""
    size = os.fstat(fd).st_size
    n_index = grid[0] * grid[1] * _INDEX_ENTRY + _CRC
    index = os.pread(fd, n_index, size - n_index) if size >= n_index else b""
    if len(index) != n_index or not _crc_ok(index):
        return None
    entries = np.frombuffer(index[:-_CRC], dtype="<u8").reshape(-1, 2)
    if (entries == np.iinfo(np.uint64).max).any() or ((entries[:, 0] + entries[:, 1]) > size).any():
        return None
    return entries


def _chunk_bytes(fd: int, entries: np.ndarray, k: int) -> np.ndarray | None:
    """Chunk ``k``'s encoded bytes (in this thread's scratch buffer, read-only), or None if they
    cannot be read whole or their checksum does not hold."""
    off, nbytes = int(entries[k, 0]), int(entries[k, 1]) - _CRC
    if nbytes <= 0:
        return None
    blob = _scratch("blob", nbytes + _CRC, np.uint8)  # this thread's buffer: no allocation per chunk
    if os.preadv(fd, [blob.data], off) != nbytes + _CRC:
        return None
    blob.flags.writeable = False  # the checksum reads read-only buffers
    crc = int.from_bytes(blob[nbytes:].tobytes(), "little")
    return blob[:nbytes] if _checksum(blob[:nbytes]) == crc else None


def _decode_shard(fd: int, out: np.ndarray, cy: int, cx: int) -> bool:
    """The tilt in an open shard file into ``out``, its chunks read (pread) and decoded on threads;
    False if the shard is not whole and sound (an empty chunk, an index or checksum that does not hold)."""
    h, w = out.shape
    grid = (-(-h // cy), -(-w // cx))
    entries = _shard_entries(fd, grid)
    if entries is None:
        return False

    def decode(k: int) -> bool:
        data = _chunk_bytes(fd, entries, k)
        if data is None:
            return False
        r, c = divmod(k, grid[1])
        rows, cols = min(cy, h - r * cy), min(cx, w - c * cx)
        region = out[r * cy : r * cy + rows, c * cx : c * cx + cols]
        whole = rows == cy and cols == cx and region.flags.c_contiguous
        tile = region if whole else _scratch("tile", cy * cx, np.float32).reshape(cy, cx)
        try:
            _BLOSC.decode(data, out=tile)  # the chunk straight into its place when it can
        except (RuntimeError, ValueError):  # not Blosc, or not one chunk's bytes
            return False
        if not whole:
            region[...] = tile[:rows, :cols]
        return True

    return all(_each(decode, len(entries)))


def _scratch(name: str, n: int, dtype: Any) -> np.ndarray:
    """This thread's reusable 1-D buffer of ``n`` items (grown when needed, never shrunk)."""
    buf = getattr(_local, name, None)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = np.empty(n, dtype)
        setattr(_local, name, buf)
    view = buf[:n]
    view.flags.writeable = True
    return view


def write_tilt_data(arr, index: int, image: np.ndarray) -> None:
    """Store tilt ``index`` of a tilt stack: its shard written whole (chunks encoded on threads,
    then one atomic rename); zarr writes any array of another layout."""
    layout = _layout(arr)
    tilt = np.ascontiguousarray(image, dtype="<f4")
    if layout is None or tilt.shape != tuple(arr.shape[1:]) or not _lz4_shuffle(arr) or arr.store.read_only:
        arr[index] = tilt
        return
    folder, (cy, cx) = layout
    h, w = tilt.shape
    grid = (-(-h // cy), -(-w // cx))
    fill = np.float32(arr.metadata.fill_value)

    def encode(k: int) -> tuple[bytes, bytes]:
        r, c = divmod(k, grid[1])
        part = tilt[r * cy : (r + 1) * cy, c * cx : (c + 1) * cx]
        if part.shape != (cy, cx) or not part.flags.c_contiguous:
            tile = _scratch("tile", cy * cx, np.float32).reshape(cy, cx)
            tile[...] = fill  # edge chunks are padded to full size, as zarr does
            tile[: part.shape[0], : part.shape[1]] = part
            part = tile
        blob = _BLOSC.encode(part)
        return blob, _checksum(blob).to_bytes(_CRC, "little")

    parts = _each(encode, grid[0] * grid[1])
    sizes = np.array([len(b) + _CRC for b, _ in parts], np.uint64)
    offsets = np.cumsum(sizes) - sizes
    index_bytes = np.stack([offsets, sizes], axis=1).astype("<u8").tobytes()
    blobs = [piece for pair in parts for piece in pair]
    _write_atomic(_shard_path(folder, index), [*blobs, _with_crc(index_bytes)])


def keep_freed_chunk_memory() -> bool:
    """Let this process reuse the memory of freed chunk-sized buffers (glibc's malloc only).

    Each chunk a write encodes comes back from Blosc in a new 4 MB buffer. By
    default glibc maps such a buffer fresh and unmaps it when freed, so every
    chunk pays about a thousand page faults and the kernel zeroing its pages
    (a fifth of a Ray actor's CPU time at 1024^2 on a 2-core VM). Raising
    malloc's mmap and trim thresholds above a chunk keeps freed buffers in the
    heap for the next one. For long-lived workers that write tilts (the engine's
    actors and prepare tasks); returns False where it does not apply.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
        chunk = 4 * 1024 * 1024 + 4096
        return bool(libc.mallopt(m_mmap_threshold, 4 * chunk) and libc.mallopt(m_trim_threshold, 64 * chunk))
    except (OSError, AttributeError):  # a libc without mallopt (musl)
        return False


def _lz4_shuffle(arr) -> bool:
    """Whether the chunks' Blosc settings are the tilt stacks' (LZ4 level 1, byte shuffle), which
    the writer encodes with."""
    blosc = arr.metadata.codecs[0].codecs[1]
    settings = (_name(blosc.cname), blosc.clevel, _name(blosc.shuffle), blosc.blocksize)
    return settings == ("lz4", 1, "shuffle", 0)


def _with_crc(data: bytes) -> bytes:
    return data + _checksum(data).to_bytes(_CRC, "little")


def _write_atomic(path: str, parts: list[bytes]) -> None:
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        f = open(tmp, "wb")
    except FileNotFoundError:  # the first file of its folder
        os.makedirs(head, exist_ok=True)
        f = open(tmp, "wb")
    try:
        with f:
            for part in parts:
                f.write(part)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
