"""The benchmark's baseline: a speed yardstick is only fair if it computes the same thing."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from faket.io import read_mrc
from faket.settings import NSTSettings

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
from baseline import BaselineNST, TorchvisionVGG19  # noqa: E402

from conftest import assert_golden, fixture_arithmetic  # noqa: E402
from test_nst import GOLDEN_CASES  # noqa: E402


@pytest.mark.parametrize("name,iterations,step", GOLDEN_CASES)
def test_baseline_reproduces_golden(golden, test_weights, name, iterations, step):
    c, s, i = (read_mrc(golden[k]) for k in ("content", "style", "init"))
    st = NSTSettings(iterations=iterations, initial_iterations=iterations, step_size=step)
    out = BaselineNST(test_weights, st).stylize_stack(c, s, i)
    assert_golden(out, read_mrc(golden[name]), step, iterations)


def test_baseline_command_loads_a_whole_torchvision_file(golden, test_weights, tmp_path):
    """The command form reads a file with the classifier, as torchvision's own does."""
    full = TorchvisionVGG19().state_dict()
    assert {k for k in full if k.startswith("features.")} == set(test_weights)
    full.update(test_weights)
    path = tmp_path / "vgg19_full.pth"
    torch.save(full, path)
    out = tmp_path / "out.mrc"
    subprocess.run([sys.executable, str(BENCH / "baseline.py"), golden["content"], golden["style"],
                    golden["init"], out, path], check=True, capture_output=True)
    assert_golden(read_mrc(out), read_mrc(golden["expected_iter1_step0.15"]), 0.15, 1)


@pytest.mark.parametrize("kernel", [["--inputs", "IN"], ["--kernel-seconds", "0.02", "--kernel", "launch"]])
def test_engine_feed_runs_the_engine_with_the_identity_kernel(tmp_path, kernel):
    """benchmarks/engine_feed.py (the engine's data path, #12's CPU proxy) runs and reports; with
    a stand-in device time it reports the share of the NST stage that device would be busy; with
    --inputs its inputs stay in that folder."""
    kernel = [str(tmp_path / "inputs") if a == "IN" else a for a in kernel]
    out = tmp_path / "feed.json"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run([sys.executable, str(BENCH / "engine_feed.py"), "--size", "32", "--tilts", "4",
                          "--json", str(out), *kernel], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["tilts"] == 4 and result["tilts_per_second"] > 0
    assert set(result["stage_seconds"]) >= {"prepare", "stylize"}
    assert (tmp_path / "inputs" / "noiseless.mrc").exists() == ("--inputs" in kernel)
    assert result["inputs"] == (str(tmp_path / "inputs") if "--inputs" in kernel else None)
    assert result["page_cache"] == {} or result["page_cache"]["dirty_gb_peak"] >= 0
    ray_start = result["ray_start_timeline"]  # the local Ray's processes, from its session's logs
    assert -0.01 <= ray_start["gcs"] < ray_start["raylet_registered"] <= ray_start["driver"], ray_start
    assert ray_start["worker_processes"] >= 1  # the actor's, at least
    if "--kernel" in kernel:  # 4 tilts x 0.02 s of a 4-tilt stage: busy for part of it, never more than all
        assert result["kernel"] == "launch" and 0 < result["kernel_busy"] <= 1
        assert result["kernel_ops"] > 0 and result["actor_kernel_over_in_process"] > 0
        thread = result["launch_thread_seconds"]  # the actor's launching thread, its 4 tilts' ops
        # the kernel's counters lag by up to a clock tick at each reading: 0.1 s of slack
        assert thread["wall"] > 0 and 0 < thread["cpu"] + thread["runqueue"] <= thread["wall"] + 0.1
    else:
        assert result["kernel"] == "identity" and "kernel_busy" not in result


def test_stand_in_kernels_spend_their_time(tmp_path, monkeypatch):
    """The engine's stand-in device times: spun in Python, or as tiny torch ops whose thread's
    wall, CPU and run-queue seconds go to the launch log."""
    from faket_cluster._hooks import LAUNCH_LOG_ENV, stand_in

    start = time.perf_counter()
    stand_in("spin:0.01", 3)
    assert time.perf_counter() - start >= 0.03
    log = tmp_path / "launches.txt"
    monkeypatch.setenv(LAUNCH_LOG_ENV, str(log))
    stand_in("launch:2000", 2)
    stand_in("launch:10", 1)
    lines = [list(map(float, line.split())) for line in log.read_text().splitlines()]
    assert len(lines) == 2 and all(len(v) == 3 and v[0] > 0 for v in lines)
    assert lines[0][0] > lines[1][0]  # 4000 ops take longer than 10


@pytest.mark.skipif(not os.environ.get("FAKET_PUBLISHED"),
                    reason="needs FAKET_PUBLISHED, a checkout of the published code (and its dependencies)")
def test_published_command_and_faket_agree(tmp_path):
    """benchmarks/published.py runs the real published command and `faket stylize` on the same
    series: faket's output is the published one to float32 round-off on the CPU (within the
    method's bounds on a CPU whose kernels round otherwise)."""
    out = tmp_path / "published.json"
    res = subprocess.run([sys.executable, str(BENCH / "published.py"), "--size", "64", "--tilts", "2",
                          "--device", "cpu", "--modes", "float32", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["published_seconds"] > 0 and result["faket_seconds"] > 0
    # each mode against the published output; on the CPU float32 is what auto resolves to
    assert set(result["deviation_by_mode"]) == {"auto", "float32"}
    assert result["deviation_by_mode"]["float32"] == result["deviation_by_mode"]["auto"]
    if fixture_arithmetic():  # this CPU's pinned kernels are the fixtures' (here: 2.4e-7 measured)
        assert result["max_abs_vs_published"] < 1e-5
    else:  # another CPU rounds otherwise (an H200 host's Xeon: 5.7e-5): the method's bounds
        assert result["max_abs_vs_published"] <= 2 * 0.15 * 1 and result["mean_abs_vs_published"] <= 1e-3


@pytest.mark.parametrize("case", ["no checkout", "no bundle"])
def test_gpu_published_refuses_bad_input_in_one_line(tmp_path, case):
    """benchmarks/gpu_published.sh: without a published checkout, or before the GPU bundle exists,
    one line and exit 2, and nothing is downloaded or written."""
    checkout = tmp_path / "published"
    if case == "no bundle":
        (checkout / "faket" / "style_transfer").mkdir(parents=True)
        (checkout / "faket" / "style_transfer" / "cli.py").write_text("")
    res = subprocess.run(["bash", str(BENCH / "gpu_published.sh"), str(checkout)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res
    assert ("cli.py" if case == "no checkout" else "gpu-bundle.sh") in res.stderr
    assert not (tmp_path / ".gpu").exists()


def test_preparing_given_tilts_never_imports_torch(tmp_path):
    """The engine's prepare task from noiseless tilts needs no torch, which takes seconds to
    import in a fresh Ray worker (2.2 s on this VM): it makes every tilt without it."""
    import pickle

    from engine_feed import write_inputs

    from faket.io import open_mrc
    from faket.noise import NoiseModel
    from faket.store import done_mask, open_store
    from faket.weights import resolve_weights
    from faket_cluster.layout import lay_out
    from faket_cluster.spec import load_spec

    spec = load_spec(write_inputs(tmp_path, 64, 3))
    lay_out(open_store(str(spec.store)), spec, resolve_weights(spec.weights, seed=spec.weights_seed).identity, None)
    with open_mrc(tmp_path / "reference.mrc") as ref:
        model = NoiseModel.given(0.5, 0.3, ref.data).to_json()
    job = tmp_path / "job.pkl"
    job.write_bytes(pickle.dumps((str(spec.store), spec.tomograms[0], model, spec.content_sigma)))
    code = ("import pickle, sys\nfrom faket_cluster.tasks import prepare_tomogram\n"
            f"args = pickle.loads(open({str(job)!r}, 'rb').read())\n"
            "print(sorted(prepare_tomogram(*args, workers=2)['seconds']), 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("] ")[-1].strip() == "False", res.stdout
    g = open_store(spec.store, mode="r")["feed"]
    assert all(done_mask(g, name).all() for name in ("noiseless", "noisy", "content", "style"))


@pytest.mark.parametrize("case", ["unknown mode", "no checkout"])
def test_published_refuses_bad_input_in_one_line(tmp_path, case):
    """benchmarks/published.py: an unknown --modes entry, or FAKET_PUBLISHED not naming a
    checkout, gets one line and exit 2 before any work (nothing written)."""
    env = {**os.environ, "FAKET_PUBLISHED": str(tmp_path / "nowhere")}
    args = ["--modes", "float32,fp8"] if case == "unknown mode" else ["--modes", "bf16"]
    out = tmp_path / "out.json"
    res = subprocess.run([sys.executable, str(BENCH / "published.py"), *args, "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res
    assert ("'fp8' is not a precision mode" if case == "unknown mode" else "FAKET_PUBLISHED") in res.stderr
    assert not out.exists()


def test_bench_noise_compares_two_checkouts_interleaved(tmp_path):
    """benchmarks/bench_noise.py times the noise statistics and NOISY + CONTENT per tilt on this
    checkout and on another one (here a copy of this faket), and reports their ratios."""
    import shutil

    import faket

    other = tmp_path / "other"
    shutil.copytree(Path(faket.__file__).parent, other / "faket")
    out = tmp_path / "noise.json"
    res = subprocess.run([sys.executable, str(BENCH / "bench_noise.py"), "--size", "48", "--tilts", "3",
                          "--workers", "1,2", "--repeats", "1", "--against", str(other), "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["workers"] for r in rows] == [1, 2]
    for r in rows:
        assert r["this"]["noise_s_per_tilt"] > 0 and r["against"]["statistics_s_per_tilt"] > 0
        assert set(r["ratio"]) >= {"noise_s_per_tilt", "statistics_s_per_tilt"}


def test_pool_cores_compares_a_pool_process_coding_chunks_in_its_thread_and_on_shard_threads(tmp_path):
    """benchmarks/diag/pool_cores.py: both modes, alternating; a pool process coding its chunks in its
    own thread runs no other thread and keeps at most one core busy."""
    out = tmp_path / "cores.json"
    res = subprocess.run([sys.executable, str(BENCH / "diag" / "pool_cores.py"), "2048", "3", "1",
                          "--json", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    shard, own = json.loads(out.read_text())["runs"]
    assert (shard["mode"], own["mode"]) == ("shard", "own")
    assert own["threads"] == 1 and shard["threads"] > 1 and own["cores"] <= 1.02
    bad = subprocess.run([sys.executable, str(BENCH / "diag" / "pool_cores.py"), "2048", "1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "TILTS 2 or more" in bad.stderr and "Traceback" not in bad.stderr


def test_attrs_under_writeback_times_updates_while_a_child_writes(tmp_path):
    """benchmarks/diag/attrs_under_writeback.py: updates timed while its two children write, nothing
    left behind; too few tilts or writers refused in one line."""
    out = tmp_path / "attrs.json"
    script = str(BENCH / "diag" / "attrs_under_writeback.py")
    res = subprocess.run([sys.executable, script, str(tmp_path), "3", "--writers", "2", "--json", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["updates"] >= 1 and 0 < got["idle_seconds"] and got["median_seconds"] > 0
    assert got["writers"] == 2 and got["tilts"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attrs.json"]
    for args, why in ((["0"], "TILTS must be 1 or more"), (["2", "--writers", "0"], "--writers must be 1 or more")):
        bad = subprocess.run([sys.executable, script, str(tmp_path), *args], capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 2 and why in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("args", [["--against", "nowhere"], ["--workers", "1,x"], ["--tilts", "0"]])
def test_bench_noise_refuses_bad_input_in_one_line(tmp_path, args):
    out = tmp_path / "noise.json"
    res = subprocess.run([sys.executable, str(BENCH / "bench_noise.py"), *args, "--json", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res
    assert "bench_noise.py:" in res.stderr and not out.exists()


@pytest.mark.parametrize("args", [
    ["--tomograms", "1"], ["--kernel-seconds", "-1"],
    pytest.param(["--device", "cuda"], marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                reason="a CUDA device: the run would start")),
])
def test_engine_pipeline_refuses_bad_input_in_one_line(tmp_path, args):
    res = subprocess.run([sys.executable, str(BENCH / "engine_pipeline.py"), *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res
    assert "engine_pipeline.py:" in res.stderr


def test_engine_pipeline_spec_has_the_tomograms_and_no_actor_count(tmp_path):
    """benchmarks/engine_pipeline.py's spec (its runs: `engine-pipeline-cpu-vm.json`): engine_feed's
    spec with N tomograms of their own seeds, and one actor per declared GPU."""
    sys.path.insert(0, str(BENCH))
    from engine_feed import write_inputs
    from engine_pipeline import tomograms_spec

    from faket_cluster.spec import load_spec

    path = write_inputs(tmp_path, 16, 3)
    tomograms_spec(path, 3)
    spec = load_spec(path)
    assert [t.name for t in spec.tomograms] == ["feed_000", "feed_001", "feed_002"]
    assert [t.seed for t in spec.tomograms] == [0, 1, 2] and spec.resources.actors is None


def test_engine_feed_inputs_are_kept_apart_and_used_again(tmp_path):
    """engine_feed's inputs in a folder of their own (``--inputs``, e.g. in /dev/shm while the store
    is on disk): a second spec of the same size and tilts points at the same files, written once;
    another size replaces them; the spec and its store stay in the run's folder."""
    sys.path.insert(0, str(BENCH))
    from engine_feed import write_inputs

    from faket.io import read_mrc
    from faket_cluster.spec import load_spec

    data = tmp_path / "inputs"
    first = load_spec(write_inputs(tmp_path / "a", 16, 3, data=data))
    assert first.tomograms[0].tilts == data / "noiseless.mrc" and first.noise_pairs[0][0] == data / "reference.mrc"
    assert first.store.parent == tmp_path / "a"
    stamps = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    second = load_spec(write_inputs(tmp_path / "b", 16, 3, data=data))
    assert second.tomograms[0].tilts == first.tomograms[0].tilts and second.store.parent == tmp_path / "b"
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == stamps  # not written again
    write_inputs(tmp_path / "c", 24, 4, data=data)
    assert read_mrc(data / "noiseless.mrc").shape == (4, 24, 24)
    assert sorted(p.name for p in data.glob("*.done")) == ["inputs-4x24.done"]


def test_ray_start_timeline_reads_each_process_first_line(tmp_path):
    """bench_core.ray_start_timeline: seconds from the driver's request to each Ray process's
    first log line (C++ logs in brackets, Python ones plain), the earliest of several workers,
    a named line where the event asks for one; files absent or without a time are left out; and
    how many worker processes logged."""
    import time

    from bench_core import ray_start_timeline

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "gcs_server.out").write_text("[2026-11-27 10:00:00,250 I 1 1] (gcs_server) main.cc:1: up\n")
    (logs / "raylet.out").write_text(
        "[2026-11-27 10:00:01,000 I 2 2] (raylet) main.cc:283: cluster ID\n"
        "Current usage: 0 / 0.27 GB\n"
        "[2026-11-27 10:00:03,500 I 2 2] (raylet) node_manager.cc:355: Raylet of id, ab started.\n"
    )
    (logs / "dashboard_agent.log").write_text("2026-11-27 10:00:02,125\tINFO agent.py:177 -- grpc\n")
    (logs / "python-core-worker-a_1.log").write_text("[2026-11-27 10:00:05,000 I 3 3] core_worker: up\n")
    (logs / "python-core-worker-b_2.log").write_text("[2026-11-27 10:00:04,750 I 4 4] core_worker: up\n")
    (logs / "runtime_env_agent.log").write_text("no time on this line\n")
    asked = time.mktime(time.strptime("2026-11-27 10:00:00", "%Y-%m-%d %H:%M:%S"))
    assert ray_start_timeline(tmp_path, asked) == {
        "gcs": 0.25, "raylet": 1.0, "dashboard_agent": 2.125, "raylet_registered": 3.5, "first_worker": 4.75,
        "worker_processes": 2,
    }


def test_bench_gpu_end_to_end_keeps_its_inputs_at_rest(tmp_path):
    """bench-gpu's whole engine run (its CPU smoke mode: the script only) puts its inputs in
    /dev/shm where there is room, removes them after, and reports the page cache's dirty peak."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--smoke-cpu",
                          "--out-dir", str(tmp_path), "--skip", "per_tilt,engine,profile,deviation,published"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (out,) = tmp_path.glob("gpu-*.json")
    (row,) = json.loads(out.read_text())["end_to_end"]
    assert row["tilts"] == 4 and row["run_seconds"] > 0
    if Path("/dev/shm").is_dir():
        assert row["inputs"].startswith("/dev/shm/faket-bench-inputs-") and not Path(row["inputs"]).exists()
    if Path("/proc/meminfo").exists():
        cache = row["page_cache"]
        assert 0 <= cache["dirty_gb_start"] and cache["dirty_gb_peak"] >= 0 and cache["mem_total_gb"] > 0
    md = out.with_suffix(".md").read_text()
    assert "dirty GB at start, peak" in md
    line = row["run_timeline"]  # the run's own clock: its first tomogram prepared, the actor's start
    assert 0 < line["prepared_beside_start"] < row["run_seconds"] and len(line["actors"]) == 1
    assert f"prepared beside the start {line['prepared_beside_start']:.1f}" in md and "first task" in md
    # its attributes written beside the NST, after the prepare
    assert line["prepared_beside_start"] <= line["attrs_written"] < row["run_seconds"]
    assert f"its attributes written {line['attrs_written']:.1f}" in md
    cpu = row["phase_cpu_seconds"]  # how many cores the prepare stage's phases kept busy
    assert cpu["prepare"]["noise"] > 0 and f"prepare's CPU seconds: noiseless {cpu['prepare']['noiseless']:.1f}" in md


def test_resting_inputs_go_to_ram_only_where_they_fit(tmp_path):
    """bench_gpu.resting_inputs: a folder in the RAM file system given room for the inputs twice
    over, none without it or without such a file system."""
    import shutil

    from bench_gpu import resting_inputs

    free = shutil.disk_usage(tmp_path).free
    assert resting_inputs(64, 4, tmp_path).parent == tmp_path
    side = int((free / 16) ** 0.5) + 1  # 2 stacks x 4 bytes: needs twice the free space at 1 tilt
    assert resting_inputs(side, 1, tmp_path) is None
    assert resting_inputs(64, 4, tmp_path / "missing") is None


@pytest.mark.parametrize("ahead", [True, False])
def test_engine_feed_fake_gpu_makes_style_targets_ahead(tmp_path, ahead):
    """engine_feed.py --fake-gpu: a GPU declared to Ray, the actor on the CPU, started before the
    prepare stage; it makes the style targets while the prepare task waits for them (the test
    hooks), or none with --no-style-ahead; the real NST either way."""
    from faket_cluster._hooks import AHEAD_DONE_ENV, HOLD_PREPARE_ENV

    out, made = tmp_path / "feed.json", tmp_path / "made"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    if ahead:
        env.update({AHEAD_DONE_ENV: str(made), HOLD_PREPARE_ENV: f"feed:{made}"})
    res = subprocess.run([sys.executable, str(BENCH / "engine_feed.py"), "--size", "64", "--tilts", "4",
                          "--real-nst", "--no-loop", "--fake-gpu", "--json", str(out)]
                         + ([] if ahead else ["--no-style-ahead"]), capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["tilts"] == 4 and result["kernel"] == "nst" and result["ray_start_timeline"] == {}
    assert result["style_gram_tilts_ahead"] == (4 if ahead else 0)
    (warm,) = result["actor_warm_up_seconds"]
    assert ("style_ahead" in warm) == ahead and warm.get("style_ahead", 1.0) > 0
    assert result["actor_compute_seconds"] > warm.get("style_ahead", 0.0)  # counted as the actor's NST


def test_machine_info_counts_the_physical_cores_apart_from_the_threads():
    """bench_core.machine_info: a result says how many cores its CPU threads sit on (two threads
    per core share one core's units); the count comes from /proc/cpuinfo's ids."""
    from bench_core import machine_info, physical_cores

    two_per_core = "".join(f"processor : {k}\nphysical id : 0\ncore id : {k // 2}\n\n" for k in range(4))
    assert physical_cores(two_per_core) == 2
    two_sockets = "".join(f"processor : {k}\nphysical id : {k}\ncore id : 0\n\n" for k in range(2))
    assert physical_cores(two_sockets) == 2 and physical_cores("processor : 0\n") is None
    cores = machine_info("cpu").get("cpu_cores")
    try:
        says = "core id" in Path("/proc/cpuinfo").read_text()
    except OSError:
        says = False
    assert (cores is not None) == says and (cores is None or 1 <= cores <= os.cpu_count())
