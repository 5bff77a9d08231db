"""faket._flags: the run store's done flags read and set without zarr-python's Python.

zarr is the reference: every flag read equals its read, flags set here read as 1 through
zarr in the bytes zarr writes, and a damaged flag file gives zarr's own error.
"""

from __future__ import annotations

import numpy as np
import pytest

from faket._flags import _layout, read_flags, set_flags
from faket.store import create_stack, done_mask, open_store, reset_done, write_tilt


@pytest.fixture
def flags(tmp_path):
    group = open_store(tmp_path / "run.zarr").create_group("tomo")
    create_stack(group, "noisy", (13, 8, 8))
    return group["done_noisy"]


def test_set_flags_read_as_zarr_reads_them_in_zarrs_bytes(flags, tmp_path):
    assert _layout(flags) is not None  # the fast path is taken
    assert read_flags(flags).tolist() == [0] * 13  # no file yet: the fill value
    set_flags(flags, [0, 5, 12])
    flags[7] = 1  # zarr's own write
    expected = [1 if i in (0, 5, 7, 12) else 0 for i in range(13)]
    assert np.asarray(flags[:]).tolist() == expected
    assert read_flags(flags).tolist() == expected
    assert read_flags(flags, [12, 7, 3]).tolist() == [1, 1, 0]
    folder = tmp_path / "run.zarr" / "tomo" / "done_noisy" / "c"
    assert (folder / "0").read_bytes() == (folder / "7").read_bytes()  # zarr's bytes for 1
    set_flags(flags, [5])  # idempotent
    flags[5] = 0  # zarr clears a flag by removing its file
    assert read_flags(flags, [5]).tolist() == [0] and not (folder / "5").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_flag_zarr_wrote_with_another_value_and_a_damaged_flag_are_zarrs(flags, tmp_path):
    flags[2] = 7  # not a done flag's value, but what zarr holds
    assert read_flags(flags, [2]).tolist() == [7]
    (tmp_path / "run.zarr" / "tomo" / "done_noisy" / "c" / "3").write_bytes(b"not zstd")
    with pytest.raises(Exception) as fast:
        read_flags(flags, [3])
    with pytest.raises(Exception) as zarr:
        flags[3]
    assert type(fast.value) is type(zarr.value)


def test_store_flags_go_through_the_fast_path_and_reset(tmp_path):
    root = open_store(tmp_path / "run.zarr")
    group = root.create_group("tomo")
    create_stack(group, "faket", (4, 8, 8))
    write_tilt(group, "faket", 2, np.ones((8, 8), np.float32))
    assert done_mask(group, "faket").tolist() == [False, False, True, False]
    assert np.asarray(group["done_faket"][:]).tolist() == [0, 0, 1, 0]
    reset_done(group, "faket")
    assert not done_mask(group, "faket").any()
    ro = open_store(tmp_path / "run.zarr", mode="r")["tomo"]
    assert done_mask(ro, "faket", [2]).tolist() == [False]


def test_other_layouts_are_left_to_zarr(tmp_path):
    import zarr

    root = zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3)
    arr = root.create_array("f", shape=(6,), dtype="uint8", chunks=(3,), fill_value=0)
    assert _layout(arr) is None
    set_flags(arr, [1, 4])
    assert read_flags(arr).tolist() == [0, 1, 0, 0, 1, 0]


def test_setting_flags_in_a_read_only_store_is_zarrs_refusal(flags, tmp_path):
    """A store opened read-only is never written by the fast path: zarr refuses, no file appears."""
    ro = open_store(tmp_path / "run.zarr", mode="r")["tomo"]["done_noisy"]
    with pytest.raises(Exception):
        set_flags(ro, [4])
    assert not (tmp_path / "run.zarr" / "tomo" / "done_noisy" / "c" / "4").exists()
    assert read_flags(flags, [4]).tolist() == [0]
