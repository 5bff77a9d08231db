"""Style Gram targets made ahead by a waiting GPU actor (cluster/_ahead.py), on the CPU."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import torch

from faket.io import write_mrc
from faket.nst import StyleTransfer, nst_batches, to_unit
from faket.settings import NSTSettings
from faket_cluster import _ahead
from faket_cluster._ahead import StyleAhead

KEY = ("run.zarr", "tomo_000")


@pytest.fixture(scope="module")
def transfer(test_weights):
    return StyleTransfer(test_weights, NSTSettings(batch_size=2), device="cpu")


def _style(tmp_path, dtype=np.float32):
    """A 5-tilt style stack of 64^2 in an MRC file, and its tilts as float32."""
    rng = np.random.default_rng(3)
    stack = (rng.normal(size=(5, 64, 64)) * 40).astype(dtype)
    path = tmp_path / "style.mrc"
    if stack.dtype == np.float32:
        write_mrc(path, stack)
    else:  # faket writes float32: an integer file as a microscope's software writes it
        with mrcfile.new(path) as f:
            f.set_data(stack)
    values = stack.astype(np.float32)
    return path, values


def _inputs(values, tilts):
    """A task's inputs as NSTWorker._read gives them: the style tilts, the stack's range (JSON
    floats, as the store's attributes hold it), the style holder and the content size."""
    return {"style": values[tilts], "style_range": [float(values.min()), float(values.max())],
            "style_holder": KEY[1], "size": (64, 64)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[s].keys() == b[s].keys() and all(torch.equal(a[s][k], b[s][k]) for k in a[s]) for s in a
    )


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_targets_made_ahead_are_the_tasks_own(tmp_path, transfer, dtype):
    """Made from the style file batch by batch as the tasks will ask (an integer file too, read
    as float32), taken by the tasks bit for bit what they make themselves."""
    path, values = _style(tmp_path, dtype)
    ahead = StyleAhead()
    ahead.make(transfer, "cpu", KEY, str(path), (64, 64), [[0, 1, 2], [3, 4]])
    assert ahead.tilts == 5 and ahead.seconds > 0
    for tilts in ([0, 1, 2], [3, 4]):
        batches = nst_batches(len(tilts), 2)
        targets, made_ahead = ahead.targets(transfer, KEY[0], _inputs(values, tilts), tilts, batches)
        assert made_ahead == len(tilts)
        unit = to_unit(values[tilts], values.min(), values.max())
        for t, b in zip(targets, batches):
            assert _same(t, transfer.style_targets([unit[b]], (64, 64)))
    assert ahead.take(KEY, (0, 1), (values.min(), values.max())) is None  # each is taken once


def test_a_task_makes_what_was_not_made_ahead(tmp_path, transfer):
    """Other batches, another style range or another holder: the task makes those targets."""
    path, values = _style(tmp_path)
    ahead = StyleAhead()
    ahead.make(transfer, "cpu", KEY, str(path), (64, 64), [[0, 1, 2, 3]])
    data = _inputs(values, [0, 1, 2, 3])
    # batches of 3 tilts this time (a task cut otherwise): no key matches
    targets, made_ahead = ahead.targets(transfer, KEY[0], data, [0, 1, 2, 3], nst_batches(4, 3))
    assert made_ahead == 0 and len(targets) == 2
    assert ahead.take(KEY, (0, 1), (values.min(), values.max())) is None  # unusable now: dropped
    ahead.make(transfer, "cpu", KEY, str(path), (64, 64), [[0, 1]])
    data["style_range"][1] += 1.0  # the store's stack is not the file's
    assert ahead.targets(transfer, KEY[0], data, [0, 1], nst_batches(2, 2))[1] == 0
    ahead.make(transfer, "cpu", KEY, str(path), (64, 64), [[0, 1]])
    other = {**_inputs(values, [0, 1]), "style_holder": "tomo_001"}
    assert ahead.targets(transfer, KEY[0], other, [0, 1], nst_batches(2, 2))[1] == 0


def test_making_ahead_stops_at_the_first_task_and_at_its_limit(tmp_path, transfer, monkeypatch):
    path, values = _style(tmp_path)
    stopped = StyleAhead()
    stopped.stop()  # the first task came before the actor was ready to make any
    stopped.make(transfer, "cpu", KEY, str(path), (64, 64), [[0, 1, 2, 3, 4]])
    assert stopped.tilts == 0
    monkeypatch.setattr(_ahead, "MOST_TILTS", 3)
    capped = StyleAhead()
    capped.make(transfer, "cpu", KEY, str(path), (64, 64), [[0, 1, 2, 3, 4]])
    assert capped.tilts == 2  # whole batches only: the second one would pass the limit


def test_targets_made_in_the_driver_are_the_actors_own(tmp_path, test_weights, transfer):
    """made_beside_start: the targets made in another process (the driver: its own VGG-19 from
    the same weights, the actors' thread count), exported to the host and adopted by the
    actor, are what the actor makes itself, bit for bit; the actor then makes only the
    batches it was not given, and the driver's thread count is left as it was."""
    path, values = _style(tmp_path)
    threads = torch.get_num_threads()
    made = _ahead.made_beside_start(test_weights, NSTSettings(batch_size=2), "cpu", 1, KEY, str(path), (64, 64),
                                    [[0, 1, 2]])
    assert torch.get_num_threads() == threads
    assert sorted(k[2] for k in made) == [(0, 1), (2,)]  # the task's NST batches
    assert all(t.device.type == "cpu" for _, m in made.values() for by in m.values() for t in by.values())
    torch.set_num_threads(1)
    try:
        own = StyleAhead()
        own.make(transfer, "cpu", KEY, str(path), (64, 64), [[0, 1, 2]])
        ahead = StyleAhead()
        ahead.adopt(made, "cpu")
        assert ahead.adopted == 3 and ahead.tilts == 0
        ahead.make(transfer, "cpu", KEY, str(path), (64, 64), [[0, 1, 2], [3, 4]])
        assert ahead.tilts == 2  # only the batch it was not given
        lo_hi = (values.min(), values.max())
        for idx in ((0, 1), (2,), (3, 4)):
            assert _same(ahead.take(KEY, idx, lo_hi), own.take(KEY, idx, lo_hi) or
                         transfer.style_targets([to_unit(values[list(idx)], *lo_hi)], (64, 64))), idx
    finally:
        torch.set_num_threads(threads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_targets_made_on_the_gpu_by_another_process_are_this_ones(tmp_path, test_weights, weights_file):
    """On CUDA the driver's targets (made in its process) stand for the actor's (made in its own):
    another process's, made with the same weights and default settings, equal this one's bit
    for bit (cuDNN chooses its kernels the same way in each process)."""
    import subprocess
    import sys

    path, _ = _style(tmp_path)
    out = tmp_path / "made.pt"
    code = (
        "import sys, torch\n"
        "from faket.settings import NSTSettings\n"
        "from faket_cluster._ahead import made_beside_start\n"
        "w = torch.load(sys.argv[1], weights_only=True)\n"
        "made = made_beside_start(w, NSTSettings(), 'cuda', 1, ('s', 'g'), sys.argv[2], (64, 64), [[0, 1, 2]])\n"
        "torch.save({str(k[2]): m for k, (_, m) in made.items()}, sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(weights_file), str(path), str(out)], check=True, timeout=300)
    theirs = torch.load(out, weights_only=True)
    mine = StyleAhead()
    mine.make(StyleTransfer(test_weights, NSTSettings(), device="cuda"), "cuda", ("s", "g"), str(path), (64, 64),
              [[0, 1, 2]])
    ours = {str(k[2]): v for k, (_, v) in mine.export().items()}
    assert ours.keys() == theirs.keys() and all(_same(ours[k], theirs[k]) for k in ours)
