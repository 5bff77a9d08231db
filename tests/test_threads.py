"""Per-tilt work on threads (faket._threads.for_each) and the stages that use it: same results as one thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from faket._threads import beside, for_each
from faket.noise import NoiseModel, tilt_stats
from faket.pipeline import copy_tilts, prepare_noise


def test_for_each_does_every_item_once_and_advances_in_the_calling_thread():
    seen: list[int] = []
    advanced: list[str] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        with lock:
            seen.append(i)

    for_each(work, list(range(20)), 4, lambda: advanced.append(threading.current_thread().name))
    assert sorted(seen) == list(range(20))
    assert len(advanced) == 20 and set(advanced) == {threading.current_thread().name}


def test_for_each_raises_the_error_of_an_item():
    def work(i: int) -> None:
        if i == 3:
            raise ValueError("tilt 3 is broken")

    with pytest.raises(ValueError, match="tilt 3"):
        for_each(work, list(range(6)), 3)


class ArraySink:
    """A sink with its arrays made up front: puts from several threads store each tilt apart."""

    def __init__(self, names, n, shape):
        self.arrays = {m: np.full((n, *shape), np.nan, np.float32) for m in names}

    def todo(self, name):
        return range(len(self.arrays[name]))

    def put(self, name, index, image):
        self.arrays[name][index] = image


def _pair(n=5, shape=(48, 40), seed=3):
    rng = np.random.default_rng(seed)
    clean = rng.random((n, *shape), dtype=np.float32)
    ref = 0.8 * clean + 0.4 * rng.standard_normal(clean.shape, dtype=np.float32)
    return ref, clean


def test_threaded_noise_statistics_equal_one_thread():
    ref, clean = _pair()
    one, four = tilt_stats(ref, clean, 1), tilt_stats(ref, clean, 4)
    for k in one:
        np.testing.assert_array_equal(four[k], one[k])


def test_threaded_prepare_equals_one_thread():
    ref, clean = _pair()
    model = NoiseModel.estimate([(ref, clean)], order=2, workers=3)
    sinks = {w: ArraySink(("noiseless", "noisy", "content"), 5, clean.shape[1:]) for w in (1, 3)}
    for w, sink in sinks.items():
        copy_tilts(sink, "noiseless", lambda i: clean[i], w)
        prepare_noise(sink, lambda i: clean[i], model, seed=7, modalities=("noisy", "content"), workers=w)
    for m in ("noiseless", "noisy", "content"):
        assert not np.isnan(sinks[3].arrays[m]).any()
        np.testing.assert_array_equal(sinks[3].arrays[m], sinks[1].arrays[m])


@pytest.mark.parametrize("workers", [1, 3])
def test_prepare_reads_each_noiseless_tilt_once_and_equals_each_modality_made_alone(workers):
    from faket.noise import apply_tilt

    ref, clean = _pair()
    model = NoiseModel.estimate([(ref, clean)], order=2)
    reads: list[int] = []
    lock = threading.Lock()

    def noiseless(i: int) -> np.ndarray:
        with lock:
            reads.append(i)
        return clean[i]

    mods = ("noisy", "content", "baseline")
    sink = ArraySink(mods, 5, clean.shape[1:])
    steps: list[int] = []
    prepare_noise(sink, noiseless, model, seed=7, modalities=mods, workers=workers, advance=lambda: steps.append(1))
    assert sorted(reads) == list(range(5)) and len(steps) == 15  # one read per tilt, one step per tilt made
    for m in mods:
        for i in range(5):
            np.testing.assert_array_equal(sink.arrays[m][i], apply_tilt(clean[i], i, model, 7, m, 0.25))


def test_beside_runs_in_a_daemon_thread_and_hands_back_result_or_error():
    release = threading.Event()
    names: list = []

    def work() -> int:
        names.append((threading.current_thread().name, threading.current_thread().daemon))
        release.wait(10)
        return 7

    fut = beside(work, "faket-test")
    assert not fut.done()                  # started, not waited for: the caller goes on
    release.set()
    assert fut.result(timeout=10) == 7 and names == [("faket-test", True)]

    def fail() -> None:
        raise ValueError("bad pair")

    err = beside(fail, "faket-test").exception(timeout=10)
    assert isinstance(err, ValueError) and str(err) == "bad pair"
