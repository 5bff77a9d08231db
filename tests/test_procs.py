"""Per-tilt work in processes (faket._procs) and the noise phase made there: the threads' values."""

from __future__ import annotations

import os

import numpy as np
import pytest

from faket._procs import (PROCESSES_ENV, each_in, pool_cpu_seconds, pool_if_it_pays, pool_size, processes_pay,
                          tilt_pool)
from faket.errors import FaketInputError
from faket.noise import NoiseModel
from faket.pipeline import prepare_noise
from faket.store import StoreSink, TiltReader, create_stack, done_mask, open_store, write_tilt


def test_processes_pay_from_many_tilts_at_once_or_as_the_switch_says(monkeypatch):
    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    assert [processes_pay(w) for w in (1, 2, 7, 8, 16)] == [False, False, False, True, True]
    monkeypatch.setenv(PROCESSES_ENV, "1")
    assert [processes_pay(w) for w in (1, 2, 16)] == [False, True, True]
    monkeypatch.setenv(PROCESSES_ENV, "0")
    assert not processes_pay(16)
    monkeypatch.setenv(PROCESSES_ENV, " ")
    assert processes_pay(16) and not processes_pay(7)


@pytest.mark.parametrize("value", ["yes", "2", "threads"])
def test_a_bad_switch_value_is_refused_by_the_library_and_in_one_line_by_the_commands(monkeypatch, tmp_path, value):
    import subprocess
    import sys

    monkeypatch.setenv(PROCESSES_ENV, value)
    with pytest.raises(FaketInputError, match=f"{PROCESSES_ENV}='{value}' is not allowed: use 1"):
        processes_pay(16)
    if value != "yes":
        return
    for command in (["-m", "faket_cluster", "run", "x.toml"], ["-m", "faket.cli", "info"]):
        res = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and PROCESSES_ENV in lines[0], res.stderr
        assert "Traceback" not in res.stderr and not (tmp_path / "x.toml").exists()


def test_a_pool_only_where_processes_pay(monkeypatch):
    monkeypatch.setenv(PROCESSES_ENV, "0")
    with pool_if_it_pays(16) as pool:
        assert pool is None
    monkeypatch.setenv(PROCESSES_ENV, "1")
    with pool_if_it_pays(2) as pool:
        assert pool is not None and pool.submit(os.getpid).result() != os.getpid()


def test_a_pool_on_many_cores_leaves_two_to_rays_start_and_the_actor():
    assert [pool_size(w) for w in (2, 7, 8, 16)] == [2, 7, 6, 14]
    with tilt_pool(2) as pool:
        assert pool._max_workers == 2  # type: ignore[attr-defined]


def _refuse_tilt(i: int) -> int:
    if i == 3:
        raise FaketInputError(f"tilt {i} is constant")
    return i


def test_each_in_hands_each_result_back_here_and_raises_a_jobs_error():
    with tilt_pool(2) as pool:
        seen: list[int] = []
        each_in(pool, _refuse_tilt, [(i,) for i in (0, 1, 2)], seen.append)
        assert sorted(seen) == [0, 1, 2]
        with pytest.raises(FaketInputError, match="tilt 3 is constant"):
            each_in(pool, _refuse_tilt, [(i,) for i in range(6)])


def _wait_for(path: str, i: int) -> str:
    """Job 0 ends at once; the others wait (30 s at most) for the file that its ``done`` makes."""
    import os
    import time

    deadline = time.monotonic() + 30
    while i and not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "saw" if i == 0 or os.path.exists(path) else "timed out"


def test_each_in_hands_back_each_result_as_it_ends(tmp_path):
    flag, results = str(tmp_path / "first-done"), []

    def done(result: str) -> None:
        results.append(result)
        open(flag, "w").close()

    with tilt_pool(2) as pool:
        each_in(pool, _wait_for, [(flag, i) for i in range(7)], done)
    assert results == ["saw"] * 7


def test_each_in_keeps_two_jobs_per_process_in_the_pool_at_most():
    """A caller that stops early (Ctrl-C) waits for the jobs in the pool: few of them."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        lock, now, most = threading.Lock(), [0], [0]
        submit = pool.submit

        def counted(*args):
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            future = submit(*args)
            future.add_done_callback(ended)
            return future

        def ended(_) -> None:
            with lock:
                now[0] -= 1

        pool.submit = counted  # type: ignore[method-assign]
        seen: list[int] = []
        each_in(pool, _refuse_tilt, [(i,) for i in (0, 1, 2) * 10], seen.append)
    assert len(seen) == 30 and 3 <= most[0] <= 6


def test_the_statistics_in_processes_refuse_a_constant_tilt_as_the_threads_do():
    """A tilt without contrast: the pool's job raises, and the caller gets the threads' one line."""
    from faket.noise import tilt_stats

    rng = np.random.default_rng(2)
    clean = rng.random((4, 40, 50), dtype=np.float32)
    ref = clean + rng.standard_normal(clean.shape, dtype=np.float32)
    ref[2] = 1.5
    with pytest.raises(FaketInputError) as on_threads:
        tilt_stats(ref, clean, 2)
    with tilt_pool(2) as pool, pytest.raises(FaketInputError) as in_pool:
        tilt_stats(ref, clean, 2, pool)
    assert str(in_pool.value) == str(on_threads.value) and "tilt 2 is constant" in str(in_pool.value)
    assert "\n" not in str(in_pool.value)


def _put_and_count_threads(writer, image: np.ndarray) -> int:
    """In a pool process: one tilt written, then the threads alive in the process."""
    import threading

    writer.put("noisy", 0, image)
    return threading.active_count()


def test_a_pool_process_codes_its_tilts_chunks_in_its_own_thread(tmp_path):
    """A pool keeps to the cores it was sized for: a tilt of two chunks, written here, goes to the
    shard threads; written in a pool process, it starts none. The tilts read back the same."""
    from faket import _shards

    image = np.random.default_rng(1).random((2048, 1024), dtype=np.float32)
    here = open_store(tmp_path / "here.zarr", mode="w").require_group("t")
    create_stack(here, "noisy", (1, 2048, 1024))
    StoreSink(here).writer(["noisy"]).put("noisy", 0, image)
    assert _shards._pool is not None  # the control: this process coded the chunks on its threads
    g = open_store(tmp_path / "pool.zarr", mode="w").require_group("t")
    create_stack(g, "noisy", (1, 2048, 1024))
    with tilt_pool(1) as pool:
        assert pool.submit(_put_and_count_threads, StoreSink(g).writer(["noisy"]), image).result() == 1
    assert np.array_equal(TiltReader(g["noisy"])(0), image)
    shard = "t/noisy/c/0/0/0"  # the same bytes as the threads' coding
    assert (tmp_path / "pool.zarr" / shard).read_bytes() == (tmp_path / "here.zarr" / shard).read_bytes()


def _group(path, clean: np.ndarray):
    g = open_store(path, mode="w").require_group("t")
    for name in ("noiseless", "noisy", "content"):
        create_stack(g, name, clean.shape)
    for i, tilt in enumerate(clean):
        write_tilt(g, "noiseless", i, tilt)
    return g


def test_the_noise_phase_in_processes_writes_the_threads_values_and_ranges(tmp_path):
    """prepare_noise with a pool: the same tilts, bit for bit, the same tracked ranges, one step
    per tilt made, and only the tilts still to do (one was written by a run that stopped)."""
    rng = np.random.default_rng(4)
    clean = rng.random((5, 67, 130), dtype=np.float32)
    ref = clean * 0.7 + rng.standard_normal(clean.shape, dtype=np.float32)
    model = NoiseModel.estimate([(ref, clean)], order=2)
    mods = ("noisy", "content")
    made = {}
    for how in ("threads", "processes"):
        g = _group(tmp_path / f"{how}.zarr", clean)
        StoreSink(g).put("noisy", 2, np.full(clean.shape[1:], 9.0, np.float32))  # kept as it is
        sink, steps = StoreSink(g, track=mods), []
        reader = TiltReader(g["noiseless"])
        if how == "threads":
            prepare_noise(sink, reader, model, 7, mods, workers=2, advance=lambda: steps.append(1))
        else:
            cpu = pool_cpu_seconds()
            with tilt_pool(2) as pool:
                prepare_noise(sink, reader, model, 7, mods, workers=2, advance=lambda: steps.append(1), pool=pool)
            assert pool_cpu_seconds() > cpu  # the processes' CPU seconds, for the phases' figures
        assert len(steps) == 9 and done_mask(g, "noisy").all() and done_mask(g, "content").all()
        made[how] = ({m: g[m][:] for m in mods}, {m: sink.stack_range(m) for m in mods})
    (threads, t_ranges), (procs, p_ranges) = made["threads"], made["processes"]
    for m in mods:
        np.testing.assert_array_equal(procs[m], threads[m], err_msg=m)
    assert p_ranges == t_ranges and p_ranges["noisy"][1] == 9.0
    assert not np.array_equal(procs["noisy"][0], procs["content"][0])


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_the_noise_statistics_in_processes_equal_the_threads_from_the_files(tmp_path, dtype):
    """tilt_stats with a pool reads the MRC files' tilts in its processes (MappedTilts pickles
    as the path): every figure as on threads from the memory maps, whatever the file's mode."""
    import mrcfile

    from faket.io import open_mrc
    from faket.noise import tilt_stats

    rng = np.random.default_rng(5)
    clean = (rng.random((4, 50, 90)) * 100).astype(dtype)
    ref = (clean * 0.5 + rng.standard_normal(clean.shape) * 20).astype(dtype)
    for name, data in (("ref.mrc", ref), ("clean.mrc", clean)):
        mrcfile.new(tmp_path / name, data=data).close()
    with open_mrc(tmp_path / "ref.mrc") as a, open_mrc(tmp_path / "clean.mrc") as b:
        threads = tilt_stats(a.data, b.data, workers=2)
        with tilt_pool(2) as pool:
            procs = tilt_stats(a.mapped(), b.mapped(), workers=2, pool=pool)
    assert a.data.dtype == dtype and list(procs) == list(threads)
    for k in threads:
        np.testing.assert_array_equal(procs[k], threads[k], err_msg=k)
    assert 0.1 < threads["r"].min() < threads["r"].max() < 1.0


def test_pool_processes_start_without_the_callers_main_module(tmp_path):
    """A driver script without a __main__ guard (``ray job submit -- python drive.py``) runs once:
    its pool's processes do not run it again, as Python's forkserver would."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "drive.py"
    script.write_text(
        "import os\n"
        "from faket._procs import each_in, tilt_pool\n"
        "print('driver ran', flush=True)\n"
        "with tilt_pool(2) as pool:\n"
        "    each_in(pool, os.getpid, [()] * 4, lambda pid: print('job in', pid != os.getpid(), flush=True))\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["driver ran"] + ["job in True"] * 4
