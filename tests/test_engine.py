"""The Ray engine with a real Ray: results equal faket's single process, resumes, GPU actors
(declared to Ray, computing on the CPU), shared stacks, manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from engine_support import single_process_result, spec_copy  # noqa: E402
from conftest import FAKET  # noqa: E402
from faket_cluster.demo import write_inputs  # noqa: E402
from faket_cluster.engine import run  # noqa: E402
from faket_cluster.spec import load_spec  # noqa: E402
from faket._procs import processes_pay  # noqa: E402
from faket.store import done_mask, open_store, holder  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_env")


def test_engine_equals_single_process_and_resumes(engine_spec, tmp_path, test_weights, local_ray, monkeypatch):
    import threading

    from faket_cluster import engine

    spec = load_spec(spec_copy(engine_spec, tmp_path))
    laid: list[str] = []
    lay_out = engine._lay_out
    monkeypatch.setattr(engine, "_lay_out", lambda *a: laid.append(threading.current_thread().name) or lay_out(*a))
    summary = run(spec, say=lambda m: None)
    assert laid == ["faket-layout"]  # the fresh store laid out in a thread while the local Ray started
    assert summary["tilts"] == 14 and summary["done_now"] == 14 and summary["actors"] == 2
    assert summary["style_gram_tilts"] == 7        # both tomograms share the reference: Grams once
    assert summary["prefetched_tasks"] >= 1        # queued tasks' inputs were read ahead
    stages = summary["stage_seconds"]              # where the run's wall time went, in order
    assert list(stages) == ["start", "noise_model", "prepare", "actors_up", "stylize", "finish"]
    assert min(stages.values()) >= 0 and sum(stages.values()) <= summary["seconds"] + 0.01
    assert stages["stylize"] == pytest.approx(summary["nst_seconds"], abs=1e-3)
    phases = summary["phase_seconds"]              # inside the tasks: where the stages went
    warm = summary["actor_warm_up_seconds"]  # each actor's start, as its first task reported it
    assert 1 <= len(warm) <= 2 and len({w["pid"] for w in warm}) == len(warm)
    assert all(list(w) == ["pid", "init", "imports", "model"] and w["init"] > 0 for w in warm), warm
    assert list(phases["start"]) == ["weights", "layout", "ray", "store"]
    # the phases cover the stage; between its last lap and the stage's, the driver's main thread may
    # wait for Python's lock (5 ms a switch) while the noise model and the prepare run beside it
    assert sum(phases["start"].values()) == pytest.approx(stages["start"], abs=0.03)
    assert list(phases["noise_model"]) == ["open", "statistics"]
    assert list(phases["prepare"]) == ["noiseless", "style", "labels", "model", "noise", "ranges", "attrs"]
    assert min(v for p in phases.values() for v in p.values()) >= 0 and phases["prepare"]["noise"] > 0
    cpu = summary["phase_cpu_seconds"]  # the same phases' CPU seconds in the processes they ran in
    assert {k: list(v) for k, v in cpu.items()} == {k: list(phases[k]) for k in ("noise_model", "prepare")}
    assert min(v for p in cpu.values() for v in p.values()) >= 0 and cpu["prepare"]["noise"] > 0
    root = open_store(spec.store, mode="r")
    for name in ("tomo_000", "tomo_001"):
        assert done_mask(root[name], "faket").all()
        got = np.asarray(root[name]["faket"][:])
        assert np.abs(got - single_process_result(spec.store, name, test_weights)).max() <= 1e-5
        assert root[name]["reconstruction"].shape == (16, 32, 32)
        assert (tmp_path / "mrc" / name / "faket.mrc").exists()
    # one copy of the style stack both are styled by: in the first one's group, and its export
    assert "style" not in root["tomo_001"] and root["tomo_001"].attrs["held_by"] == {"style": "tomo_000"}
    assert [(tmp_path / "mrc" / n / "style.mrc").exists() for n in ("tomo_000", "tomo_001")] == [True, False]
    assert summary["prepared_before"] == []
    assert summary["noise_model_beside_start"]    # estimated in the driver while the local Ray started
    assert summary["prepared_beside_start"] == ["tomo_000"]   # and the first tomogram prepared then
    # their tilts in processes on many cores (faket._procs), else threads
    assert summary["tilt_processes"] is processes_pay(len(os.sched_getaffinity(0)))
    line = summary["timeline"]  # on the wall clock, seconds after the run began
    assert 0 < line["prepared_beside_start"] < summary["seconds"]
    assert [a["pid"] for a in line["actors"]] == [w["pid"] for w in warm]
    for a in line["actors"]:  # each actor's process started in this run, then set up, warm, its first task
        assert list(a) == ["pid", "process", "constructed", "warm", "first_task"], a
        assert -0.02 <= a["process"] <= a["constructed"] <= a["warm"] <= a["first_task"] < summary["seconds"], a
    open_store(spec.store)["tomo_000"].attrs["sources"] = {}   # from the spec: refreshed below
    exported = tmp_path / "mrc" / "tomo_000" / "faket.mrc"
    stamp = exported.stat().st_mtime_ns
    import faket_cluster.stages

    def no_actors(*args):
        raise AssertionError("actors started with nothing to do")

    with monkeypatch.context() as patch:
        patch.setattr(faket_cluster.stages, "launch", no_actors)  # nor weights sent to Ray
        again = run(spec, say=lambda m: None)
    assert again["done_now"] == 0 and again["done_before"] == 14 and again["actors"] == 0
    # nothing written into the store: the MRC files of the first run are current and kept
    assert not summary["export_kept"] and again["export_kept"] and exported.stat().st_mtime_ns == stamp
    assert sorted(again["exported"]) == sorted(summary["exported"])
    # every tomogram prepared already: no prepare task and no noise model
    assert again["prepared_before"] == ["tomo_000", "tomo_001"] and again["prepared_beside_start"] == []
    assert again["phase_seconds"]["noise_model"] == {} and again["phase_seconds"]["prepare"] == {}
    assert again["tilt_processes"] is False  # nothing made beside the start
    assert open_store(spec.store, mode="r")["tomo_000"].attrs["sources"]["style"].endswith(".mrc")
    # A deleted and a truncated tilt, their done flags still set: the resume finds and redoes them
    clean = {(n, a): np.asarray(root[n][a][:]) for n in ("tomo_000", "tomo_001")
             for a in ("noisy", "faket", "reconstruction")}
    shard = spec.store / "tomo_000" / "faket" / "c" / "3" / "0" / "0"
    shard.unlink()
    noisy = spec.store / "tomo_001" / "noisy" / "c" / "2" / "0" / "0"
    noisy.write_bytes(noisy.read_bytes()[:100])
    said: list[str] = []
    repaired = run(spec, say=said.append)
    assert repaired["done_now"] == 1 and repaired["done_before"] == 13, (repaired, said)
    assert repaired["prepared_before"] == ["tomo_000"]   # tomo_001's NOISY tilt is made again
    assert not repaired["export_kept"] and exported.stat().st_mtime_ns != stamp   # exported again
    assert repaired["phase_seconds"]["noise_model"]["statistics"] > 0
    # Ray was up already: the Ray task estimated it, the same model (tomo_001's NOISY equals below)
    assert not repaired["noise_model_beside_start"]
    # an estimate beside the start that failed: the Ray task makes the same model instead
    from concurrent.futures import Future

    from faket_cluster import stages
    from faket_cluster.engine import policy_of
    from faket_cluster.tasks import estimate_noise_model

    failed: Future = Future()
    failed.set_exception(OSError("the driver could not read a pair"))
    model, phases = stages.noise_model(spec, policy_of(spec), 0.0, failed)
    pairs = [(str(a), str(b)) for a, b in spec.noise_pairs]
    assert model == estimate_noise_model(pairs, spec.noise_order, 1)["model"]
    assert phases["seconds"]["statistics"] > 0 and phases["cpu_seconds"]["statistics"] > 0
    assert any("2 done tilt(s) or volume(s) missing or corrupt" in m for m in said), said
    root = open_store(spec.store, mode="r")
    for (n, a), want in clean.items():
        assert np.array_equal(np.asarray(root[n][a][:]), want), (n, a)
    # `faket store verify` names the damage; --repair reruns the spec that made the store
    ray.shutdown()
    shard.unlink()
    res = subprocess.run([FAKET, "store", "verify", str(spec.store)], capture_output=True, text=True)
    assert res.returncode == 1 and res.stdout.startswith("tomo_000/faket tilt 3: missing"), res
    res = subprocess.run([FAKET, "store", "verify", str(spec.store), "--repair"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.split("\n", 1)[1])["done_now"] == 1   # the rerun's summary
    root = open_store(spec.store, mode="r")
    assert np.array_equal(np.asarray(root["tomo_000"]["faket"][:]), clean[("tomo_000", "faket")])
    # --restart-stage stylize: every tilt styled again from the stacks prepared already; no
    # prepare task, and no noise model, not even in a thread beside Ray's start
    from faket.pipeline import Stage

    asked: list[str] = []
    beside_start = stages.noise_model_beside_start
    monkeypatch.setattr(stages, "noise_model_beside_start",
                        lambda *a: asked.append("early") or beside_start(*a))
    redone = run(spec, say=lambda m: None, restart=Stage.STYLIZE)
    assert redone["done_now"] == 14 and redone["prepared_before"] == ["tomo_000", "tomo_001"]
    assert redone["phase_seconds"]["noise_model"] == {} and redone["phase_seconds"]["prepare"] == {}
    assert asked == []
    for name in ("tomo_000", "tomo_001"):
        got = np.asarray(open_store(spec.store, mode="r")[name]["faket"][:])
        assert np.abs(got - single_process_result(spec.store, name, test_weights)).max() <= 1e-5


def test_one_actor_per_gpu_with_declared_gpus(engine_spec, tmp_path, test_weights, local_ray, monkeypatch):
    """GPU scheduling, with two GPUs declared to Ray: a stand-in for GPUs (device="cpu").

    Ray's resource accounting is real: with no actor count given the engine
    starts one actor per GPU and Ray gives each its own GPU id; with
    ``device = "cpu"`` the actors compute on the CPU, also on a machine with a
    real GPU, with the same results. The reproducible switch reaches every actor.
    """
    from faket_cluster.engine import init_ray
    from faket.reproducible import ENV_VAR

    monkeypatch.setenv(ENV_VAR, "1")
    init_ray(num_cpus=2, num_gpus=2)
    spec = load_spec(spec_copy(engine_spec, tmp_path, **{"actors = 2\n": "",
                                                     'export = "': '# export = "'}))
    assert spec.resources.actors is None and spec.resources.device == "cpu"
    summary = run(spec, say=lambda m: None)
    assert summary["gpu"] and summary["actors"] == 2
    assert not summary["actors_started_early"]         # they would leave the prepare stage no CPU
    assert summary["gpu_ids"] == ["0", "1"] and summary["devices"] == ["cpu"]
    [compute] = summary["compute"]                     # both actors: the same arithmetic
    assert compute["reproducible"] is True and compute["device"] == "cpu"
    assert open_store(spec.store, mode="r").attrs["compute"] == summary["compute"]
    root = open_store(spec.store, mode="r")
    got = np.asarray(root["tomo_000"]["faket"][:])
    assert np.abs(got - single_process_result(spec.store, "tomo_000", test_weights)).max() <= 1e-5


def test_gpu_actors_start_during_the_prepare_stage(engine_spec, tmp_path, test_weights, local_ray, monkeypatch):
    """With CPUs to spare, GPU actors (one GPU declared to Ray, device="cpu") start and warm up
    before the prepare stage, whose tasks get the CPUs the actor leaves, and make the first
    tomogram's style Gram targets while it is prepared (held here until they are made); its
    tasks take them, and the results are the same."""
    from faket_cluster._hooks import AHEAD_DONE_ENV, HOLD_PREPARE_ENV
    from faket_cluster.engine import init_ray
    from faket_cluster.fleet import free_cpus

    made = tmp_path / "targets-made"
    monkeypatch.setenv(AHEAD_DONE_ENV, str(made))
    monkeypatch.setenv(HOLD_PREPARE_ENV, f"tomo_000:{made}")
    init_ray(num_cpus=3, num_gpus=1)
    spec = load_spec(spec_copy(engine_spec, tmp_path, **{"actors = 2\n": "", 'export = "': '# export = "'}))
    summary = run(spec, say=lambda m: None)
    assert summary["gpu"] and summary["actors"] == 1 and summary["actors_started_early"]
    # both tomograms are styled by the reference (held by tomo_000): its 7 tilts' targets ahead
    assert summary["style_gram_tilts_ahead"] == 7 and summary["actor_warm_up_seconds"][0]["style_ahead"] > 0
    (line,) = summary["timeline"]["actors"]  # the actor's start, then the targets, then its first task
    order = ["process", "constructed", "warm", "ahead_from", "ahead_to", "first_task"]
    assert list(line) == ["pid", *order] and line["pid"] == summary["actor_warm_up_seconds"][0]["pid"]
    points = [line[k] for k in order]
    assert -0.02 <= points[0] and points == sorted(points) and points[-1] < summary["seconds"], line
    assert summary["done_now"] == 14 and summary["failed"] == []
    root = open_store(spec.store, mode="r")
    for name in ("tomo_000", "tomo_001"):
        got = np.asarray(root[name]["faket"][:])
        assert np.abs(got - single_process_result(spec.store, name, test_weights)).max() <= 1e-5
    # a task's CPUs come back a moment after its result: the count waits for them
    ray.get(ray.remote(num_cpus=3)(lambda: 1).remote())
    assert free_cpus(1) == 3 and free_cpus(1, reserved=1) == 2 and free_cpus(2) == 1


def test_gpu_actors_stylize_a_prepared_tomogram_while_the_next_one_prepares(engine_spec, tmp_path, test_weights,
                                                                          local_ray, monkeypatch):
    """With GPU actors up (one GPU declared to Ray, device="cpu") and several tomograms, each
    tomogram's NST starts as soon as it is prepared: tomo_001's prepare task is held until a tilt
    of tomo_000 is stylised (a watcher opens the gate; the staged run would time out), and the
    results are the single-process ones."""
    import threading

    from faket_cluster._hooks import HOLD_PREPARE_ENV
    from faket_cluster.engine import init_ray

    gate = tmp_path / "gate"
    monkeypatch.setenv(HOLD_PREPARE_ENV, f"tomo_001:{gate}")
    init_ray(num_cpus=3, num_gpus=1)
    spec = load_spec(spec_copy(engine_spec, tmp_path, **{"actors = 2\n": "", 'export = "': '# export = "'}))
    opened: list[float] = []

    def watch() -> None:  # opens the gate once tomo_000 has a stylised tilt, not before
        end = time.monotonic() + 60
        while time.monotonic() < end and not gate.exists():
            try:
                if done_mask(open_store(spec.store, mode="r")["tomo_000"], "faket").any():
                    opened.append(time.monotonic())
                    gate.touch()
            except (KeyError, FileNotFoundError, ValueError):
                pass  # the store is not laid out yet
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    summary = run(spec, say=lambda m: None)
    watcher.join(timeout=5)
    assert opened, "tomo_000 had no stylised tilt while tomo_001 was being prepared"
    assert summary["pipelined"] and summary["actors_started_early"] and summary["failed"] == []
    assert summary["done_now"] == 14 and summary["style_gram_tilts"] >= 7
    assert summary["prepare_seconds"] > summary["stage_seconds"]["prepare"]  # the rest beside the NST
    root = open_store(spec.store, mode="r")
    for name in ("tomo_000", "tomo_001"):
        got = np.asarray(root[name]["faket"][:])
        assert np.abs(got - single_process_result(spec.store, name, test_weights)).max() <= 1e-5
        assert root[name].attrs["ome"]["multiscales"], name  # OME-Zarr metadata, written as it was prepared


def test_manifest_expands_tomograms_styles_seeds(engine_spec, tmp_path):
    text = engine_spec.read_text() + '''
[[manifest]]
name = "many"
volume = "inputs/tomo_000_volume.mrc"
angles = "inputs/angles.tlt"
seeds = [5, 6, 7]
styles = ["inputs/reference.mrc", "inputs/reference.mrc"]
'''
    p = engine_spec.parent / "manifest.toml"
    p.write_text(text)
    spec = load_spec(p)
    names = [t.name for t in spec.tomograms]
    assert len(names) == 2 + 6 and "many_st1_s7" in names
    assert {t.seed for t in spec.tomograms if t.name.startswith("many")} == {5, 6, 7}


def test_installed_under_its_own_name(tmp_path):
    """The engine installs as faket_cluster (no top-level `cluster`) and adds `faket run`."""
    res = subprocess.run([sys.executable, "-c", "import faket_cluster.engine\nimport cluster"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "No module named 'cluster'" in res.stderr, res.stderr
    res = subprocess.run([FAKET, "run", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "run spec" in res.stdout.lower(), res.stderr


def test_tomograms_styled_by_one_file_share_one_style_stack(engine_spec, tmp_path):
    """The first tomogram of a style holds its stack; the others are prepared only with it; a
    store that holds copies already keeps them; a holder left out of the spec is not relied on."""
    import dataclasses

    from faket.pipeline import Stage
    from faket.store import create_stack, write_tilt
    from faket.weights import resolve_weights
    from faket_cluster.layout import holders, lay_out
    from faket_cluster.stages import prepared

    spec = load_spec(spec_copy(engine_spec, tmp_path))
    identity = resolve_weights(spec.weights).identity
    root = open_store(spec.store, mode="w")
    lay_out(root, spec, identity)
    first, second = root["tomo_000"], root["tomo_001"]
    assert "style" in first and "style" not in second and holder(root, second, "style").path == first.path
    for name in [a for a in Stage.PREPARE.arrays if a != "style" and a in second]:
        flags = second[f"done_{name}"]
        flags[:] = np.ones(flags.shape, np.uint8)
    second.attrs["ranges"] = {"content": [0.0, 1.0], "noisy": [0.0, 1.0]}
    assert prepared(root, spec) == frozenset()          # its holder's style stack is not written yet
    for i in range(first["style"].shape[0]):
        write_tilt(first, "style", i, np.ones(first["style"].shape[1:], np.float32))
    first.attrs["ranges"] = {"style": [1.0, 1.0]}
    assert prepared(root, spec) == frozenset({"tomo_001"})
    # `faket report` of the other tomogram compares with the holder's copy
    from faket.report import find_store_tomogram

    second["done_faket"][:] = np.ones(second["done_faket"].shape, np.uint8)
    reference = find_store_tomogram(spec.store, "tomo_001").stacks["reference"]
    assert reference.shape == first["style"].shape and np.asarray(reference[0]).min() == 1.0
    # a holder the store lacks (a damaged store): one line and exit 2, nothing written
    second.attrs["held_by"] = {"style": "tomo_gone"}
    res = subprocess.run([FAKET, "report", str(spec.store), "--tomogram", "tomo_001", "-o", str(tmp_path / "rep")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "has no style stack" in res.stderr and "tomo_gone" in res.stderr and not (tmp_path / "rep").exists()
    second.attrs["held_by"] = {"style": "tomo_000"}
    # the holder left out of the spec: the other gets a copy of its own, to prepare
    alone = dataclasses.replace(spec, tomograms=spec.tomograms[1:])
    own = {"noiseless": "tomo_001", "style": "tomo_001"}
    assert holders(root, alone) == {"tomo_001": own} and prepared(root, alone) == frozenset()
    lay_out(root, alone, identity)
    assert "style" in root["tomo_001"] and "held_by" not in root["tomo_001"].attrs
    # a group holding a copy (a store of an earlier version) keeps it, with the holder back in
    lay_out(root, spec, identity)
    assert "style" in root["tomo_001"] and holders(root, spec)["tomo_001"] == own
    other = open_store(tmp_path / "old.zarr", mode="w")
    create_stack(other.require_group("tomo_001"), "style", spec.tomograms[1].style_shape)
    assert {n: h["style"] for n, h in holders(other, spec).items()} == {"tomo_000": "tomo_001",
                                                                       "tomo_001": "tomo_001"}


def test_a_tomogram_goes_to_the_nst_once_its_style_holder_is_prepared():
    from faket_cluster.stages import _StyleGate

    passed: list[str] = []
    gate = _StyleGate({"a": "a", "b": "a", "c": "c", "d": "a"}, passed.append)
    gate("b")
    gate("c")
    assert passed == ["c"]                     # b waits for a, which holds its style stack
    gate("a")
    gate("d")
    assert passed == ["c", "b", "a", "d"]
    assert gate.failed({"a": "OSError: disk full"}) == {
        "a": "OSError: disk full",
        "b": "its style stack is held by tomogram a, which was not prepared",
        "d": "its style stack is held by tomogram a, which was not prepared",
    }


def test_cli_demo_and_engine_give_equal_results(tmp_path, weights_file, local_ray, monkeypatch):
    """One orchestration: `faket demo` (one process), the engine on the same specimen, and
    `faket stylize` on the engine's stacks agree bit for bit under the reproducible switch
    (AVX2 kernels and 2 threads everywhere, the engine's actor included), also when a task
    carries several tilts through the network one NST batch at a time."""
    from conftest import run_faket
    from faket.io import read_mrc
    from faket.reproducible import ENV_VAR

    demo = run_faket("demo", "-o", tmp_path / "demo", "--size", 32, "--angles", "-30,30,15",
                     "--vgg-weights", weights_file, "--device", "cpu", "--reproducible")
    assert demo.returncode == 0, demo.stderr
    spec = write_inputs(tmp_path / "engine", tomograms=1, size=32, angles=(-30.0, 30.0, 15.0))
    text = spec.read_text().replace('vgg = "imagenet"', f'vgg = "{weights_file}"')
    # tasks of 3 tilts, each through the network one tilt at a time (as the CLI's batch 1)
    spec.write_text(text.replace("batch = 1", 'batch = 3\nactors = 1\ndevice = "cpu"') + "\n[nst]\nbatch_size = 1\n")
    monkeypatch.setenv(ENV_VAR, "1")
    summary = run(load_spec(spec), say=lambda m: None)
    assert summary["done_now"] == 5 and summary["nst_tasks"] == 2
    g = open_store(tmp_path / "engine" / "run.zarr", mode="r")["tomo_000"]
    for name in ("noiseless", "noisy", "content", "faket"):
        assert np.array_equal(np.asarray(g[name][:]), read_mrc(tmp_path / "demo" / "tomo" / f"{name}.mrc")), name
    exported = tmp_path / "engine" / "mrc" / "tomo_000"
    cli = run_faket("stylize", exported / "content.mrc", exported / "style.mrc", "--init", exported / "noisy.mrc",
                    "-o", tmp_path / "cli.mrc", "--vgg-weights", weights_file, "--device", "cpu", "--reproducible")
    assert cli.returncode == 0, cli.stderr
    assert np.array_equal(read_mrc(tmp_path / "cli.mrc"), np.asarray(g["faket"][:]))


def test_an_export_is_current_only_with_the_same_folder_tomograms_and_every_file(tmp_path):
    from types import SimpleNamespace

    from faket_cluster.engine import _current_export

    files = [tmp_path / "mrc" / "t0" / "faket.mrc", tmp_path / "mrc" / "t0" / "noisy.mrc"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    record = {"folder": str(tmp_path / "mrc"), "tomograms": ["t0"], "files": [str(f) for f in files]}
    root, spec = SimpleNamespace(attrs={"export": record}), SimpleNamespace(export=tmp_path / "mrc")
    assert _current_export(root, spec, ["t0"]) == record["files"]
    assert _current_export(root, spec, ["t0", "t1"]) is None                          # another set
    assert _current_export(root, SimpleNamespace(export=tmp_path / "out"), ["t0"]) is None  # moved
    assert _current_export(SimpleNamespace(attrs={"export": None}), spec, ["t0"]) is None  # written since
    files[1].unlink()
    assert _current_export(root, spec, ["t0"]) is None                                # a file gone
