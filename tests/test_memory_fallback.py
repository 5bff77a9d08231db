"""Running out of device memory never ends a run (#12): the batch is split, then the tilt tiled.

A CPU stand-in for a GPU: ``torch.OutOfMemoryError`` (what CUDA raises) is
injected into StyleTransfer.stylize_batch; the results must equal runs that fit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faket.errors import FaketInputError
from faket.nst import StyleTransfer, stylize_stack
from faket.settings import NSTSettings


def _stacks(n: int, h: int, w: int) -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [rng.random((n, h, w)).astype(np.float32) for _ in range(3)]


def _out_of_memory_when(monkeypatch, transfer: StyleTransfer, too_big) -> list[tuple[int, object]]:
    """Make ``transfer.stylize_batch`` raise OutOfMemoryError whenever ``too_big(batch, settings)``."""
    real, calls = transfer.stylize_batch, []

    def flaky(content, *args, **kwargs):
        calls.append((len(content), transfer.settings.tile_size))
        if too_big(len(content), transfer.settings):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return real(content, *args, **kwargs)

    monkeypatch.setattr(transfer, "stylize_batch", flaky)
    return calls


def test_a_batch_that_does_not_fit_is_split_and_equals_single_tilts(test_weights, monkeypatch):
    c, s, i = _stacks(4, 48, 40)
    ref = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(batch_size=1), device="cpu"))
    t = StyleTransfer(test_weights, NSTSettings(batch_size=4), device="cpu")
    calls = _out_of_memory_when(monkeypatch, t, lambda b, st: b > 1)
    out = stylize_stack(c, [s], i, t)
    assert np.array_equal(out, ref)
    assert [b for b, _ in calls] == [4, 2, 1, 1, 2, 1, 1]
    assert t.memory_fallbacks == [f"batch of {b} split in halves (out of memory)" for b in (4, 2, 2)]


def test_a_tilt_that_does_not_fit_is_tiled_and_equals_a_tiled_run(test_weights, monkeypatch):
    c, s, i = _stacks(2, 64, 64)
    tiled = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(tile_size=32), device="cpu"))
    t = StyleTransfer(test_weights, NSTSettings(), device="cpu")
    calls = _out_of_memory_when(monkeypatch, t, lambda b, st: st.tile_size is None)
    out = stylize_stack(c, [s], i, t)
    assert np.array_equal(out, tiled)
    assert calls == [(1, None), (1, 32), (1, 32)]          # the tile size is kept for the next tilt
    assert t.memory_fallbacks == ["64x64 tilt tiled at 32 pixels"]


def test_a_tilt_too_large_for_any_tile_is_one_line(test_weights, monkeypatch):
    c, s, i = _stacks(1, 48, 48)
    t = StyleTransfer(test_weights, NSTSettings(), device="cpu")
    _out_of_memory_when(monkeypatch, t, lambda b, st: True)
    with pytest.raises(FaketInputError, match="does not fit the device's memory") as info:
        stylize_stack(c, [s], i, t)
    assert "\n" not in str(info.value)


def test_a_batch_the_memory_model_says_does_not_fit_is_split_before_trying(test_weights, monkeypatch):
    """The calibrated model (faket._tiling.predict_peak_bytes) splits a batch up front, no OOM needed."""
    from faket._tiling import predict_peak_bytes

    c, s, i = _stacks(2, 240, 240)
    one = predict_peak_bytes(240, 240, 1, 29) / 2**30
    two = predict_peak_bytes(240, 240, 2, 29) / 2**30
    budget = (one + two) / 2                      # one tilt fits whole, two do not
    ref = stylize_stack(c, [s], i, StyleTransfer(test_weights, NSTSettings(batch_size=1), device="cpu"))
    t = StyleTransfer(test_weights, NSTSettings(batch_size=2, memory_budget_gb=budget), device="cpu")
    calls = _out_of_memory_when(monkeypatch, t, lambda b, st: False)
    out = stylize_stack(c, [s], i, t)
    assert np.array_equal(out, ref)
    assert calls == [(1, None), (1, None)]         # never tried as a pair, never tiled
    assert len(t.memory_fallbacks) == 1 and "predicted" in t.memory_fallbacks[0]


def test_the_memory_model_grows_with_pixels_and_batch():
    from faket._tiling import PEAK_FIXED_BYTES, predict_peak_bytes

    a = predict_peak_bytes(1024, 1024, 1, 29) - PEAK_FIXED_BYTES
    assert predict_peak_bytes(2048, 2048, 1, 29) - PEAK_FIXED_BYTES == pytest.approx(4 * a, rel=1e-6)
    assert predict_peak_bytes(1024, 1024, 3, 29) - PEAK_FIXED_BYTES == pytest.approx(3 * a, rel=1e-6)
    assert predict_peak_bytes(1024, 1024, 1, 29, itemsize=8) - PEAK_FIXED_BYTES == pytest.approx(2 * a, rel=1e-6)
