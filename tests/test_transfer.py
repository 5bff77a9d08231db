"""Host <-> device transfers of the NST (faket._transfer): read-ahead order, uploads, results back.

The CUDA cases need a GPU (they run on the GPU machine, skipped here); the
CPU cases check the read-ahead and that the CPU path hands the arrays over as they are.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from faket._transfer import read_ahead, to_host, upload
from faket.nst import StyleTransfer, iter_stylize, stack_range, stylize_tilts
from faket.settings import NSTSettings

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@pytest.mark.parametrize("enabled", [False, True])
def test_read_ahead_yields_every_item_in_order(enabled):
    assert list(read_ahead(lambda k: k * k, 5, enabled)) == [0, 1, 4, 9, 16]
    assert list(read_ahead(lambda k: k, 0, enabled)) == []


def test_read_ahead_loads_the_next_item_while_the_caller_uses_this_one():
    loaded: list[int] = []
    started = threading.Event()

    def load(k: int) -> int:
        loaded.append(k)
        if k == 1:
            started.set()
        return k

    it = read_ahead(load, 3, True)
    assert next(it) == 0
    assert started.wait(5), "item 1 was not loaded while item 0 was in use"
    assert list(it) == [1, 2]
    assert loaded == [0, 1, 2]


def test_read_ahead_passes_a_load_error_to_the_caller():
    def load(k: int) -> int:
        if k == 1:
            raise OSError("tilt 1 unreadable")
        return k

    it = read_ahead(load, 3, True)
    assert next(it) == 0
    with pytest.raises(OSError, match="tilt 1"):
        next(it)


def test_upload_to_the_cpu_hands_the_arrays_over_unchanged():
    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    up = upload({"content": a, "nested": {"x": [a]}, "range": (0.0, 1.0), "init": None}, "cpu")
    got = up.ready()
    assert got["content"] is a and got["nested"]["x"][0] is a
    assert got["range"] == (0.0, 1.0) and got["init"] is None


def test_to_host_of_a_cpu_tensor_is_float32():
    out = to_host(torch.arange(4, dtype=torch.float64))
    assert out.dtype == np.float32 and out.tolist() == [0, 1, 2, 3]


@CUDA
def test_upload_and_back_is_a_copy_of_every_value():
    rng = np.random.default_rng(1)
    arrays = {"a": rng.random((3, 257, 129), dtype=np.float32), "b": [rng.standard_normal((2, 64, 64))]}
    up = upload(arrays, "cuda")
    got = up.ready()
    assert got["a"].is_cuda and got["a"].dtype == torch.float32
    np.testing.assert_array_equal(to_host(got["a"]), arrays["a"])
    np.testing.assert_array_equal(to_host(got["b"][0]), arrays["b"][0].astype(np.float32))


@CUDA
def test_iter_stylize_with_uploads_ahead_equals_batch_by_batch_from_host_arrays(test_weights, monkeypatch):
    """The read-ahead only moves data: each batch equals stylize_tilts on the host arrays."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    rng = np.random.default_rng(5)
    c, s, i = (rng.random((5, 96, 80), dtype=np.float32) for _ in range(3))
    t = StyleTransfer(test_weights, NSTSettings(batch_size=2, precision="float32"), device="cuda")
    got = {start: images for start, images, _ in iter_stylize(c, [s], i, t)}
    ranges = {"content": stack_range(c), "init": stack_range(i), "style0": stack_range(s)}
    gen = torch.Generator().manual_seed(t.settings.seed)
    for start in range(0, 5, 2):
        sl = slice(start, start + 2)
        want, _ = stylize_tilts(t, c[sl], i[sl], s[sl], ranges, styles=[s[sl]], generator=gen)
        np.testing.assert_array_equal(got[start], want)
