"""The Ray engine's start: a local Ray without idle workers or the API server, the first
tomogram prepared and its style targets made in the driver while Ray starts."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from engine_support import single_process_result, spec_copy  # noqa: E402
from faket_cluster.engine import run  # noqa: E402
from faket_cluster.spec import load_spec  # noqa: E402
from faket.store import done_mask, open_store  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_env")


def test_a_local_ray_starts_no_idle_workers(local_ray):
    """init_ray's local Ray starts Python workers as tasks and actors need them, not one per CPU
    as its driver connects (Ray's default holds the driver until min(CPUs, cores) have started)."""
    from faket_cluster.engine import init_ray

    init_ray(num_cpus=2)
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    time.sleep(1.0)  # where Ray prestarted workers, they would be logging by now
    assert list(logs.glob("python-core-worker-*.log")) == []
    assert ray.get(ray.remote(lambda: os.getpid()).remote()) != os.getpid()  # started when a task needs them
    assert list(logs.glob("python-core-worker-*.log"))


def test_a_failed_prepare_beside_the_start_leaves_the_tomogram_to_its_task():
    from concurrent.futures import Future

    from faket_cluster.stages import prepared_beside_start

    failed: Future = Future()
    failed.set_exception(OSError("disk full"))
    said: list[str] = []
    none = {"seconds": {}, "cpu_seconds": {}}
    assert prepared_beside_start(("tomo_000", failed), frozenset({"x"}), said.append) == (frozenset({"x"}), none)
    assert said == ["preparing tomo_000 beside Ray's start failed (OSError: disk full); a task tries again"]
    done: Future = Future()
    done.set_result({"name": "tomo_000", "n": 7, "seconds": {"noise": 0.5}, "cpu_seconds": {"noise": 3.25}})
    assert prepared_beside_start(("tomo_000", done), frozenset(), said.append) == (
        frozenset({"tomo_000"}), {"seconds": {"noise": 0.5}, "cpu_seconds": {"noise": 3.25}})
    assert prepared_beside_start(None, frozenset({"x"}), said.append) == (frozenset({"x"}), none)


def test_the_local_start_leaves_out_only_the_dashboards_api_server(monkeypatch):
    """ray_setup._no_api_server: while usage statistics are off, Ray's call to start the API
    server with the dashboard off (by position or keyword) starts nothing; any other call goes
    to Ray's function, and that function is back in place afterwards."""
    from ray._private import services

    from faket_cluster.ray_setup import _no_api_server

    calls: list = []
    monkeypatch.setattr(services, "start_api_server", lambda *a, **k: calls.append((a, k)) or ("url", "proc"))
    original = services.start_api_server
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    with _no_api_server():
        assert services.start_api_server(False, False, "127.0.0.1") == (None, None)
        assert services.start_api_server(include_dashboard=False, raise_on_failure=False) == (None, None)
        assert services.start_api_server(True, False, "127.0.0.1") == ("url", "proc")
        assert services.start_api_server(None, False) == ("url", "proc")
    assert services.start_api_server is original and len(calls) == 2
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")  # Ray's own start, usage statistics and all
    with _no_api_server():
        assert services.start_api_server(False, False) == ("url", "proc")
    assert len(calls) == 3


def _laid_out(spec) -> object:
    from concurrent.futures import Future

    from faket_cluster.layout import lay_out

    root = open_store(str(spec.store))
    lay_out(root, spec, {"weights": "test"})
    laid: Future = Future()
    laid.set_result(root)
    return laid


def _model(spec) -> dict:
    from faket_cluster.tasks import estimate_noise_model

    return estimate_noise_model([(str(a), str(b)) for a, b in spec.noise_pairs], spec.noise_order, 1)


def _wait_written(g, prep, names: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 60
    while not all(done_mask(g, n).all() for n in names):
        assert not prep.done() and time.monotonic() < deadline, "the prepare ended or stalled first"
        time.sleep(0.05)


@pytest.mark.parametrize("processes", ["0", "1"], ids=["threads", "processes"])
def test_a_prepare_beside_the_start_writes_what_needs_no_noise_model_while_it_is_estimated(engine_spec, tmp_path,
                                                                                             monkeypatch, processes):
    """stages.prepare_beside_start: the first tomogram's noiseless and style stacks are written
    while the noise model is still being estimated, its noise once the model is there (on
    threads, or in processes as on a many-core host); the store then equals one prepared in one
    piece on threads with the model at hand."""
    from concurrent.futures import Future

    from faket import _procs
    from faket_cluster.stages import prepare_beside_start
    from faket_cluster.tasks import prepare_tomogram

    monkeypatch.setenv(_procs.PROCESSES_ENV, processes)
    pools: list = []
    real = _procs.tilt_pool
    monkeypatch.setattr(_procs, "tilt_pool", lambda n: pools.append(n) or real(n))
    spec = load_spec(spec_copy(engine_spec, tmp_path / "a"))
    early: Future = Future()
    name, prep = prepare_beside_start(spec, early, _laid_out(spec))
    g = open_store(str(spec.store), mode="r")[name]
    _wait_written(g, prep, ("noiseless", "style"))
    time.sleep(0.2)
    assert not done_mask(g, "noisy").any() and not prep.done()  # the noise waits for its model
    early.set_result(_model(spec))
    result = prep.result(timeout=120)
    # its group's attributes are the driver's to write, beside the NST (faket_cluster._meta)
    assert list(result["seconds"]) == ["noiseless", "style", "labels", "model", "noise", "ranges"]
    assert "ranges" not in g.attrs and result["attrs"]["ranges"] == result["ranges"]
    assert done_mask(g, "noisy").all() and done_mask(g, "content").all()
    assert pools == ([len(os.sched_getaffinity(0))] if processes == "1" else [])

    whole = load_spec(spec_copy(engine_spec, tmp_path / "b"))
    _laid_out(whole)
    prepare_tomogram(str(whole.store), whole.tomograms[0], early.result()["model"], whole.content_sigma, 2)
    ref = open_store(str(whole.store), mode="r")[name]
    for a in ("noiseless", "style", "noisy", "content"):
        np.testing.assert_array_equal(g[a][:], ref[a][:], err_msg=a)
    assert result["ranges"] == ref.attrs["ranges"]   # what the tasks carry: what a prepare task records
    assert result["attrs"] == {k: ref.attrs[k] for k in result["attrs"]}


def test_the_noise_model_beside_the_start_in_processes_is_the_one_thread_model(engine_spec, tmp_path, monkeypatch):
    """stages.noise_model_beside_start as on a many-core host (its tilts in processes): the
    model's JSON equals the one made on one thread."""
    from faket import _procs
    from faket_cluster import stages

    monkeypatch.setenv(_procs.PROCESSES_ENV, "1")
    pools: list = []
    real = _procs.tilt_pool
    monkeypatch.setattr(_procs, "tilt_pool", lambda n: pools.append(n) or real(n))
    monkeypatch.setattr(stages.ray, "is_initialized", lambda: False)  # as before a local start
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = load_spec(spec_copy(engine_spec, tmp_path))
    early = stages.noise_model_beside_start(spec, None)
    assert early is not None
    made = early.result(timeout=120)
    assert made["model"] == _model(spec)["model"] and list(made["seconds"]) == ["open", "statistics"]
    assert pools == [len(os.sched_getaffinity(0))]


def test_a_failed_noise_model_leaves_the_stacks_written_before_it_for_the_retry(engine_spec, tmp_path):
    """Where the estimate beside the start fails, the prepare raises its error after writing the
    stacks that need no model; the prepare task's retry keeps them and writes the rest."""
    from concurrent.futures import Future

    from faket_cluster.stages import prepare_beside_start
    from faket_cluster.tasks import prepare_tomogram

    spec = load_spec(spec_copy(engine_spec, tmp_path))
    early: Future = Future()
    early.set_exception(OSError("reference unreadable"))
    name, prep = prepare_beside_start(spec, early, _laid_out(spec))
    assert isinstance(prep.exception(timeout=120), OSError)
    g = open_store(str(spec.store), mode="r")[name]
    assert done_mask(g, "noiseless").all() and done_mask(g, "style").all() and not done_mask(g, "noisy").any()
    chunks = {p: p.stat().st_mtime_ns for a in ("noiseless", "style") for p in (spec.store / name / a).rglob("*")}
    assert len(chunks) > 4
    prepare_tomogram(str(spec.store), spec.tomograms[0], _model(spec)["model"], spec.content_sigma, 2)
    assert done_mask(g, "noisy").all() and done_mask(g, "content").all()
    assert {p: p.stat().st_mtime_ns for p in chunks} == chunks  # kept, not written again


@pytest.mark.parametrize("fails", [False, True], ids=["made", "failed"])
def test_the_driver_makes_the_style_targets_while_ray_and_the_actor_start(engine_spec, tmp_path, test_weights,
                                                                          local_ray, monkeypatch, fails):
    """A run that starts its own Ray with a GPU (declared here; the actor computes on the CPU, and
    a test hook lets the driver do so too) makes the first tomogram's style targets in the
    driver beside Ray's start; the actor keeps them and makes none itself, its tasks take
    them, and the results are the single-process ones. Where the driver's attempt fails, the
    actor and its tasks make them, with the same results."""
    import faket_cluster._ahead
    import faket_cluster.ray_setup
    from faket_cluster._hooks import DRIVER_AHEAD_CPU_ENV

    monkeypatch.setattr(faket_cluster.ray_setup, "_visible_gpus", lambda: 1)
    monkeypatch.setenv(DRIVER_AHEAD_CPU_ENV, "1")
    if fails:
        def out_of_memory(*args):
            raise RuntimeError("CUDA out of memory (injected)")

        monkeypatch.setattr(faket_cluster._ahead, "made_beside_start", out_of_memory)
    # noiseless tilts, not volumes: no projection in the driver changes torch's thread count meanwhile
    edits = {f'volume = "inputs/{n}_volume.mrc"': 'tilts = "inputs/reference_noiseless.mrc"'
             for n in ("tomo_000", "tomo_001")}
    spec = load_spec(spec_copy(engine_spec, tmp_path, **{"actors = 2\n": "", 'export = "': '# export = "', **edits}))
    assert spec.tomograms[0].volume is None
    summary = run(spec, say=lambda m: None)
    assert summary["gpu"] and summary["actors"] == 1 and summary["actors_started_early"]
    assert summary["prepared_beside_start"] == ["tomo_000"]
    line = summary["timeline"]
    if fails:
        assert summary["style_gram_tilts_made_in_driver"] == 0 and "driver_targets" not in line
    else:
        assert summary["style_gram_tilts_made_in_driver"] == 7 and summary["style_gram_tilts_ahead"] == 7
        assert "style_ahead" not in summary["actor_warm_up_seconds"][0]  # the actor made none itself
        (actor,) = line["actors"]  # made before the actor's first task asked for them
        assert 0 <= line["driver_targets"][0] <= line["driver_targets"][1] <= actor["first_task"], line
    assert summary["done_now"] == 14 and summary["failed"] == []
    root = open_store(spec.store, mode="r")
    for name in ("tomo_000", "tomo_001"):
        got = np.asarray(root[name]["faket"][:])
        assert np.abs(got - single_process_result(spec.store, name, test_weights)).max() <= 1e-5


def test_the_driver_makes_style_targets_only_on_a_gpu_it_can_share(engine_spec, tmp_path, monkeypatch):
    """_ahead_plan.style_targets_beside_start: nothing for CPU actors, nothing without a GPU in the
    driver that other processes may use too (unless a test asks for the CPU), nothing when
    turned off; none of these waits for the store's layout."""
    from concurrent.futures import Future

    import torch

    from faket_cluster import _ahead_plan
    from faket_cluster._hooks import DRIVER_AHEAD_CPU_ENV, NO_DRIVER_AHEAD_ENV
    from faket_cluster.fleet import ActorPlan

    spec = load_spec(spec_copy(engine_spec, tmp_path))
    never: Future = Future()  # a layout that never ends: waited on, the test would hang
    gpu, cpu = ActorPlan(1, True, 1.0, True), ActorPlan(2, False, 0.0, False)
    assert _ahead_plan.style_targets_beside_start(spec, None, cpu, never) is None
    if not torch.cuda.is_available():
        assert not _ahead_plan._cuda_here()
        assert _ahead_plan.style_targets_beside_start(spec, None, gpu, never) is None
    monkeypatch.setenv(DRIVER_AHEAD_CPU_ENV, "1")
    monkeypatch.setenv(NO_DRIVER_AHEAD_ENV, "1")
    assert _ahead_plan.style_targets_beside_start(spec, None, gpu, never) is None


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU on this machine")
def test_a_shared_gpu_is_the_one_nvidia_smi_calls_default():
    from faket_cluster._ahead_plan import _cuda_here

    res = subprocess.run(["nvidia-smi", "--query-gpu=compute_mode", "--format=csv,noheader", "-i", "0"],
                         capture_output=True, text=True)
    if res.returncode != 0 or os.environ.get("CUDA_VISIBLE_DEVICES"):
        pytest.skip("nvidia-smi cannot tell, or CUDA's device 0 is another GPU than its")
    assert _cuda_here() == (res.stdout.strip() == "Default")
