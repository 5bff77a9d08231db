"""faket.store.read_tilt: the run store's tilts decoded from their shards on threads.

zarr-python is the reference: every value equal to its read, and where a shard
is missing, partly empty or damaged, zarr's own value or error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faket._shards import _layout
from faket.store import create_stack, create_volume, open_store, read_tilt, write_tilt


@pytest.fixture
def group(tmp_path):
    return open_store(tmp_path / "run.zarr").create_group("tomo")


def _shard(tmp_path: Path, name: str, i: int) -> Path:
    return tmp_path / "run.zarr" / "tomo" / name / "c" / str(i) / "0" / "0"


@pytest.mark.parametrize("shape", [(3, 40, 56), (2, 1500, 1100), (2, 2048, 2048)])
def test_equals_zarr_for_one_and_many_chunks(group, shape):
    arr = create_stack(group, "noisy", shape)
    assert _layout(arr) is not None  # the fast path is taken
    data = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    for i in range(shape[0]):
        write_tilt(group, "noisy", i, data[i])
    for i in range(shape[0]):
        got = read_tilt(arr, i)
        assert got.dtype == np.float32 and got.shape == shape[1:]
        np.testing.assert_array_equal(got, data[i])
        np.testing.assert_array_equal(got, np.asarray(arr[i]))
        batch = np.full((2, *shape[1:]), np.nan, np.float32)
        assert np.shares_memory(read_tilt(arr, i, out=batch[1]), batch)
        np.testing.assert_array_equal(batch[1], data[i])  # decoded into its place in the batch
        assert np.isnan(batch[0]).all()


def test_unwritten_tilts_and_empty_chunks_read_as_zarr_does(group):
    arr = create_stack(group, "content", (2, 1500, 1100))
    tilt = np.random.default_rng(1).random((1500, 1100), dtype=np.float32)
    tilt[:1024, :1024] = 0  # the fill value: zarr leaves this chunk out of the shard
    write_tilt(group, "content", 0, tilt)
    np.testing.assert_array_equal(read_tilt(arr, 0), tilt)
    np.testing.assert_array_equal(read_tilt(arr, 1), np.asarray(arr[1]))  # never written


@pytest.mark.parametrize("damage", ["flip a data byte", "truncate", "flip an index byte"])
def test_a_damaged_shard_fails_as_zarr_fails(group, tmp_path, damage):
    arr = create_stack(group, "style", (1, 1500, 1100))
    write_tilt(group, "style", 0, np.random.default_rng(2).random((1500, 1100), dtype=np.float32))
    shard = _shard(tmp_path, "style", 0)
    raw = bytearray(shard.read_bytes())
    if damage == "flip a data byte":
        raw[100] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(Exception) as zarr_error:
        np.asarray(arr[0])
    with pytest.raises(type(zarr_error.value)):
        read_tilt(arr, 0)


def test_other_arrays_are_read_by_zarr(group):
    vol = create_volume(group, "reconstruction", (4, 8, 8))
    vol[:] = np.arange(256, dtype=np.float32).reshape(4, 8, 8)
    assert _layout(vol) is None
    np.testing.assert_array_equal(read_tilt(vol, 2), np.asarray(vol[2]))


@pytest.mark.parametrize("shape", [(2, 40, 56), (2, 1500, 1100)])
def test_written_tilts_read_back_by_zarr_bit_for_bit_and_leave_no_temporary_file(group, tmp_path, shape):
    from faket._shards import write_tilt_data

    arr = create_stack(group, "faket", shape)
    rng = np.random.default_rng(4)
    first, second = (rng.standard_normal(shape[1:]).astype(np.float32) for _ in range(2))
    write_tilt_data(arr, 1, first)
    np.testing.assert_array_equal(np.asarray(arr[1]), first)
    write_tilt_data(arr, 1, second)  # a rewrite replaces the shard whole
    np.testing.assert_array_equal(np.asarray(arr[1]), second)
    np.testing.assert_array_equal(np.asarray(arr[0]), 0)  # the other tilt untouched
    folder = tmp_path / "run.zarr" / "tomo" / "faket"
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_a_write_that_fails_keeps_the_tilt_written_before_and_no_temporary_file(group, tmp_path, monkeypatch):
    import os

    from faket._shards import write_tilt_data

    arr = create_stack(group, "faket", (2, 40, 56))
    before = np.full((40, 56), 2.5, np.float32)
    write_tilt_data(arr, 1, before)

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space"):
        write_tilt_data(arr, 1, np.zeros((40, 56), np.float32))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(arr[1]), before)
    assert not [p for p in (tmp_path / "run.zarr").rglob("*") if p.name.endswith(".tmp")]


def test_write_tilt_uses_zarr_for_another_layout(group):
    from faket._shards import write_tilt_data

    vol = create_volume(group, "reconstruction", (4, 8, 8))
    write_tilt_data(vol, 2, np.full((8, 8), 3.0, np.float32))
    np.testing.assert_array_equal(np.asarray(vol[2]), 3.0)


def test_a_store_opened_read_only_is_not_written(group, tmp_path):
    from faket._shards import write_tilt_data

    create_stack(group, "faket", (1, 40, 56))
    ro = open_store(tmp_path / "run.zarr", mode="r")["tomo"]["faket"]
    with pytest.raises(Exception):  # zarr's own refusal
        write_tilt_data(ro, 0, np.ones((40, 56), np.float32))
    assert not _shard(tmp_path, "faket", 0).exists()


def test_the_range_of_a_stored_stack_reads_whole_chunk_rows(group, monkeypatch):
    """stack_range over a Zarr stack: the right extremes, each row block a whole chunk row."""
    from faket._scaling import stack_range

    arr = create_stack(group, "noisy", (2, 1500, 2100))
    data = np.random.default_rng(5).standard_normal((2, 1500, 2100)).astype(np.float32)
    for i in range(2):
        write_tilt(group, "noisy", i, data[i])
    starts: list[int] = []

    class Spy:
        shape, ndim, chunks = arr.shape, arr.ndim, arr.chunks

        def __getitem__(self, key):
            starts.append(key[1].start)
            return arr[key]

    assert stack_range(Spy()) == (data.min(), data.max())
    assert starts and all(r % arr.chunks[1] == 0 for r in starts)


def test_keep_freed_chunk_memory_stops_page_faults_per_written_tilt(tmp_path):
    """In a fresh process: each 1024^2 tilt written costs about a thousand page faults (Blosc's
    fresh 4 MB buffer) until keep_freed_chunk_memory(), then almost none; the tilts stay sound."""
    import subprocess
    import sys

    script = f"""
import resource, numpy as np
from faket.store import create_stack, keep_freed_chunk_memory, open_store, read_tilt, write_tilt
g = open_store({str(tmp_path / "run.zarr")!r}, mode="w").create_group("t")
arr = create_stack(g, "a", (8, 1024, 1024))
x = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
def faults(k):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(k, k + 4):
        write_tilt(g, "a", i, x)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 4
write_tilt(g, "a", 0, x)
before = faults(0)
kept = keep_freed_chunk_memory()
faults(4)
after = faults(4)
assert all(np.array_equal(read_tilt(arr, i), x) for i in range(8))
print(kept, before, after)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    kept, before, after = res.stdout.split()
    if kept != "True":
        pytest.skip("not glibc's malloc")
    assert float(after) < 100 < float(before), res.stdout


def test_checksums_are_zarrs_and_computed_without_pythons_lock():
    """The shard reader and writer checksum with the ``crc32c`` package (it lets go of Python's
    lock for large buffers; zarr's ``google_crc32c`` holds it), and get zarr's values."""
    import google_crc32c

    from faket._shards import _checksum, _crc32c

    assert _crc32c.__module__.partition(".")[0] == "crc32c"  # a dependency: not the fallback
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 4099, 1 << 16, 3_000_001):
        data = rng.integers(0, 256, n, dtype=np.uint8)
        assert _checksum(data) == google_crc32c.value(data.tobytes())


def test_an_arrays_layout_is_worked_out_once_per_array(tmp_path):
    """per_array keeps what it found by the array's metadata: again for a reopened array, whose
    metadata zarr reads anew (a store changed in between is seen), and not for the same one."""
    from faket._shards import per_array

    calls: list[str] = []
    found = per_array(lambda arr: calls.append(arr.path) or arr.shape)
    root = open_store(tmp_path / "run.zarr")
    arr = create_stack(root.create_group("tomo"), "noisy", (2, 8, 8))
    assert found(arr) == found(arr) == (2, 8, 8) and calls == ["tomo/noisy"]
    again = open_store(tmp_path / "run.zarr")["tomo/noisy"]
    assert found(again) == (2, 8, 8) and calls == ["tomo/noisy"] * 2


def test_a_tilt_is_sound_when_every_checksum_in_its_shard_holds(group, tmp_path):
    """tilt_sound checks the shard's index and each chunk's checksum without decoding: a byte
    changed in any chunk or in the index is found, as zarr's read finds it."""
    from faket._shards import tilt_sound

    arr = create_stack(group, "noisy", (3, 1500, 1100))  # 2 x 2 chunks per tilt
    for i in range(2):
        write_tilt(group, "noisy", i, np.random.default_rng(i).random((1500, 1100), np.float32))
    assert tilt_sound(arr, 0) is True and tilt_sound(arr, 1) is True
    assert tilt_sound(arr, 2) is None  # never written: zarr's fill value, no shard to check
    for i, where in ((0, -30), (1, -300)):  # into the index; into the last chunk's bytes
        path = _shard(tmp_path, "noisy", i)
        data = bytearray(path.read_bytes())
        data[where] ^= 0xFF
        path.write_bytes(bytes(data))
        assert tilt_sound(arr, i) is False
        with pytest.raises(Exception):
            np.asarray(arr[i])  # zarr finds it too
    volume = create_volume(group, "reconstruction", (4, 8, 8))
    assert tilt_sound(volume, 0) is None  # another layout: left to zarr
