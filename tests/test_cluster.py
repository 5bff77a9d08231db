"""The Ray engine with a real Ray: equality with faket, actor death, driver death, bad specs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from faket_cluster.demo import write_inputs  # noqa: E402
from conftest import FAKET, console_script  # noqa: E402
from faket_cluster.actor import HOLD_ENV  # noqa: E402
from faket_cluster.engine import CRASH_ONCE_ENV, run  # noqa: E402
from faket_cluster.spec import load_spec  # noqa: E402
from faket.errors import FaketInputError  # noqa: E402
from faket.nst import StyleTransfer, stylize_stack  # noqa: E402
from faket.settings import NSTSettings  # noqa: E402
from faket.store import done_mask, open_store, holder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ANGLES = (-45.0, 45.0, 15.0)


@pytest.fixture(autouse=True)
def _ray_env(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, weights_file):
    out = tmp_path_factory.mktemp("run")
    spec = write_inputs(out, tomograms=2, size=32, angles=ANGLES)
    text = spec.read_text().replace('vgg = "imagenet"', f'vgg = "{weights_file}"')
    # CPU actors: these tests compare with CPU references, also on a machine with a GPU
    spec.write_text(text.replace("batch = 1", 'batch = 1\nactors = 2\ndevice = "cpu"'))
    return spec


def _spec_copy(spec: Path, tmp: Path, **replace) -> Path:
    text = spec.read_text().replace('store = "run.zarr"', f'store = "{tmp / "run.zarr"}"')
    text = text.replace('export = "mrc"', f'export = "{tmp / "mrc"}"')
    for k, v in replace.items():
        text = text.replace(k, v)
    new = spec.parent / f"spec_{tmp.name}.toml"
    new.write_text(text)
    return new


def _reference(store: Path, name: str, weights) -> np.ndarray:
    """The single-process result, with the actors' thread count (1 CPU each): same kernels."""
    import torch

    root = open_store(store, mode="r")
    g = root[name]
    c, i = (np.asarray(g[k][:]) for k in ("content", "noisy"))
    s = np.asarray(holder(root, g, "style")["style"][:])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return stylize_stack(c, [s], i, StyleTransfer(weights, NSTSettings(), device="cpu"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def local_ray():
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_a_failed_ray_start_leaves_the_store_laid_out_whole(inputs, tmp_path, local_ray, monkeypatch):
    """The store is laid out in a thread while Ray starts: where Ray's start fails, the error
    goes up only once the layout has ended, so no half-made store is left behind."""
    import threading

    from faket_cluster import engine

    spec = load_spec(_spec_copy(inputs, tmp_path))
    events: list[str] = []
    lay_out = engine._lay_out

    def slow_lay_out(*a):
        time.sleep(1.0)
        root = lay_out(*a)
        events.append("laid out")
        return root

    def no_ray(*a, **k):
        events.append("Ray failed")
        raise RuntimeError("Ray could not start")

    monkeypatch.setattr(engine, "_lay_out", slow_lay_out)
    monkeypatch.setattr(engine, "init_ray", no_ray)
    with pytest.raises(RuntimeError, match="Ray could not start"):
        run(spec, say=lambda m: None)
    assert events == ["Ray failed", "laid out"]
    root = open_store(spec.store, mode="r")
    assert {"content", "noisy", "faket"} <= set(root["tomo_000"].array_keys())
    # the first tomogram's prepare, beside the start, ends on its own (a daemon thread)
    deadline = time.monotonic() + 60
    while any(t.name.startswith("faket-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_engine_equals_single_process_and_resumes(inputs, tmp_path, test_weights, local_ray, monkeypatch):
    import threading

    from faket_cluster import engine

    spec = load_spec(_spec_copy(inputs, tmp_path))
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
    assert sum(phases["start"].values()) == pytest.approx(stages["start"], abs=0.01)
    assert list(phases["noise_model"]) == ["open", "statistics"]
    assert list(phases["prepare"]) == ["noiseless", "style", "labels", "model", "noise", "ranges", "attrs"]
    assert min(v for p in phases.values() for v in p.values()) >= 0 and phases["prepare"]["noise"] > 0
    root = open_store(spec.store, mode="r")
    for name in ("tomo_000", "tomo_001"):
        assert done_mask(root[name], "faket").all()
        got = np.asarray(root[name]["faket"][:])
        assert np.abs(got - _reference(spec.store, name, test_weights)).max() <= 1e-5
        assert root[name]["reconstruction"].shape == (16, 32, 32)
        assert (tmp_path / "mrc" / name / "faket.mrc").exists()
    # one copy of the style stack both are styled by: in the first one's group, and its export
    assert "style" not in root["tomo_001"] and root["tomo_001"].attrs["held_by"] == {"style": "tomo_000"}
    assert [(tmp_path / "mrc" / n / "style.mrc").exists() for n in ("tomo_000", "tomo_001")] == [True, False]
    assert summary["prepared_before"] == []
    assert summary["noise_model_beside_start"]    # estimated in the driver while the local Ray started
    assert summary["prepared_beside_start"] == ["tomo_000"]   # and the first tomogram prepared then
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
    assert model == estimate_noise_model(pairs, spec.noise_order, 1)["model"] and phases["statistics"] > 0
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
        assert np.abs(got - _reference(spec.store, name, test_weights)).max() <= 1e-5


def test_actor_killed_mid_run(inputs, tmp_path, test_weights, local_ray, monkeypatch):
    """An actor dies mid-task: the run still ends complete and right. Its two tomograms are seeds
    of one volume (a manifest's seeds): the first holds the noiseless stack, the second is
    prepared after it and makes its noise from that copy, with its own seed's draws."""
    from faket.noise import NoiseModel, apply_tilt_modalities
    from faket_cluster.tasks import estimate_noise_model

    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))
    spec = load_spec(_spec_copy(inputs, tmp_path, **{'export = "': '# export = "',
                                                      "[resources]": "[resources]\nshare_style = 1",
                                                      "tomo_001_volume": "tomo_000_volume"}))
    summary = run(spec, say=lambda m: None)
    assert marker.exists()                                # an actor did die mid-task
    assert summary["done_now"] == 14
    assert summary["style_gram_tilts"] >= 14              # share_style = 1: Grams per tomogram
    root = open_store(spec.store, mode="r")
    for name in ("tomo_000", "tomo_001"):
        got = np.asarray(root[name]["faket"][:])
        assert np.abs(got - _reference(spec.store, name, test_weights)).max() <= 1e-5
    first, second = root["tomo_000"], root["tomo_001"]
    assert "noiseless" not in second and second.attrs["held_by"] == {"noiseless": "tomo_000", "style": "tomo_000"}
    pairs = [(str(a), str(b)) for a, b in spec.noise_pairs]
    model = NoiseModel.from_json(estimate_noise_model(pairs, spec.noise_order, 1)["model"])
    assert second.attrs["seed"] != first.attrs["seed"]
    made = apply_tilt_modalities(np.asarray(first["noiseless"][2]), 2, model, second.attrs["seed"], ["noisy"],
                                 spec.content_sigma)
    assert np.array_equal(made["noisy"], np.asarray(second["noisy"][2]))
    assert not np.array_equal(np.asarray(first["noisy"][2]), np.asarray(second["noisy"][2]))


def _actor_pids() -> list[int]:
    """PIDs of this machine's NST actor processes (Ray titles them ``ray::NSTWorker...``)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"ray::NSTWorker" in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _done(store: Path) -> int:
    try:
        root = open_store(store, mode="r")
        return sum(int(done_mask(root[n], "faket").sum()) for n in ("tomo_000", "tomo_001") if n in root)
    except Exception:                                      # not laid out yet
        return 0


def test_actor_killed_by_pid_equals_an_uninterrupted_run(inputs, tmp_path, local_ray):
    """SIGKILL of an actor process from outside, mid-run (`faket run` in its own process):
    the output is bit-identical to an uninterrupted run, with no tilt missing. The
    HOLD hook keeps the actors waiting after their first task, so the kill lands mid-run
    on any machine, however fast."""
    extra = {'export = "': '# export = "', "[resources]": "[resources]\nshare_style = 1\nretry_backoff = 0.05"}
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean = load_spec(_spec_copy(inputs, clean_dir, **extra))
    assert run(clean, say=lambda m: None)["done_now"] == 14
    spec_path = _spec_copy(inputs, tmp_path, **extra)
    store = load_spec(spec_path).store
    release = tmp_path / "release"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", HOLD_ENV: str(release)}
    env.pop("RAY_ADDRESS", None)
    before = set(_actor_pids())                            # the in-process run's (ended) actors
    proc = subprocess.Popen([FAKET, "run", str(spec_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    killed, deadline = None, time.time() + 240
    try:
        while proc.poll() is None and time.time() < deadline and killed is None:
            pids = [p for p in _actor_pids() if p not in before]
            if len(pids) == 2 and _done(store) >= 2:       # both actors held after a task
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            time.sleep(0.05)
        release.touch()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed is not None and proc.returncode == 0 and 2 <= _done(store)
    summary = json.loads(out)                              # stdout stays JSON after a fault
    assert summary["failed"] == [] and summary["done_now"] == 14 and _done(store) == 14
    a, b = open_store(store, mode="r"), open_store(clean.store, mode="r")
    for name in ("tomo_000", "tomo_001"):
        assert np.array_equal(np.asarray(a[name]["faket"][:]), np.asarray(b[name]["faket"][:]))


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc's parent links)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [c for c, p in parents.items() if p in frontier]
        tree += frontier
    return tree


def _commands(pids: list[int]) -> list[str]:
    """The command lines of these processes (those still running)."""
    found = []
    for pid in pids:
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def _listening(pids: list[int]) -> list[tuple[str, int, bool]]:
    """The addresses (ip, port, is loopback) on which these processes listen (TCP) or are bound (UDP)."""
    import ipaddress

    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[9] not in inodes or (table.startswith("tcp") and f[3] != "0A"):   # 0A: LISTEN
                continue
            hexip, port = f[1].split(":")
            raw = bytes.fromhex(hexip)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))   # host-order words
            ip = ipaddress.ip_address(raw)
            ip = getattr(ip, "ipv4_mapped", None) or ip                     # ::ffff:127.0.0.1
            found.append((str(ip), int(port, 16), ip.is_loopback))
    return found


# Ctrl-C (SIGINT) takes the same path as SIGTERM (one handler); it is tested on a plain command
# in test_bad_inputs.py, which keeps this suite's engine runs to two.
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_driver_stopped_then_rerun_finishes_the_rest(inputs, tmp_path, test_weights, sig):
    """The driver killed (SIGKILL), terminated or interrupted mid-run; a rerun finishes the rest.
    SIGTERM and Ctrl-C end the run cleanly: one line saying how far it got, exit 143 / 130,
    and the local Ray it started ends with it. While it runs, every socket it and its
    Ray opened is on loopback, and that Ray runs no dashboard API server (the local start
    leaves it out: ray_setup._no_api_server)."""
    spec_path = _spec_copy(inputs, tmp_path, **{"actors = 2": "actors = 1",
                                                 'export = "': '# export = "'})
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "faket_cluster", "run", str(spec_path)]
    # the actor holds after its first task (never released): the stop lands mid-run on any machine
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, HOLD_ENV: str(tmp_path / "never")},
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    store = tmp_path / "run.zarr"
    deadline, done, tree, sockets = time.time() + 240, 0, [], []
    try:
        while time.time() < deadline and proc.poll() is None and done < 2:
            done = _done(store)
            time.sleep(0.2)
        tree, sockets = _tree(proc.pid), _listening(_tree(proc.pid))
        commands = _commands(tree)
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
        gone = time.time() + 30
        while time.time() < gone and any(Path(f"/proc/{p}").exists() for p in tree):
            time.sleep(0.2)
        left = [p for p in tree if Path(f"/proc/{p}").exists()]
    finally:
        if sig == signal.SIGKILL or proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)            # the driver and the Ray it started
        proc.wait()
    assert 2 <= done < 14, done
    assert sockets and all(loopback for _, _, loopback in sockets), sockets
    assert any("raylet" in c for c in commands), commands
    assert not any("dashboard/dashboard.py" in c for c in commands), commands
    if sig != signal.SIGKILL:
        lines = err.strip().splitlines()
        assert proc.returncode == 128 + sig, err
        assert lines[-1] == f"faket-cluster: interrupted: {_done(store)} of 14 tilts done; rerun the " \
                            "same command to resume", err
        assert "Traceback" not in err and out == ""
        assert left == [], f"processes left running after the driver ended: {left}"
    res = subprocess.run([*cmd, "--summary", str(tmp_path / "summary.json")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""                                # --summary FILE: the JSON goes there
    summary = json.loads((tmp_path / "summary.json").read_text())
    root = open_store(store, mode="r")
    left = 14 - summary["done_before"]
    assert summary["done_now"] == left and summary["done_before"] >= done
    for name in ("tomo_000", "tomo_001"):
        assert done_mask(root[name], "faket").all()
        got = np.asarray(root[name]["faket"][:])
        assert np.abs(got - _reference(store, name, test_weights)).max() <= 1e-5


@pytest.mark.parametrize("edit,message", [
    (('[style]', '[style]\ncolour = "blue"'), "unknown key 'colour' in [style]"),
    (('angles = "inputs/angles.tlt"', 'angles = "inputs/missing.tlt"'), "missing.tlt does not exist"),
    (('[resources]', '[resources]\ngpus_per_actor = -1'), "gpus_per_actor"),
    (('reference = "inputs/reference.mrc"\n', 'reference = "inputs/short.mrc"\n'), "has 5 tilts"),
    (('[run]', '[run]\nbogus = 1'), "unknown key 'bogus' in [run]"),
])
def test_bad_specs_fail_before_any_work(inputs, tmp_path, edit, message):
    from faket.io import read_mrc, write_mrc

    ref = read_mrc(inputs.parent / "inputs" / "reference.mrc")
    write_mrc(inputs.parent / "inputs" / "short.mrc", ref[:5])
    text = inputs.read_text().replace(*edit, 1)
    bad = inputs.parent / "bad.toml"
    bad.write_text(text.replace('store = "run.zarr"', f'store = "{tmp_path / "run.zarr"}"'))
    with pytest.raises(FaketInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_spec(bad)
    assert not (tmp_path / "run.zarr").exists()


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


def test_impossible_resources_fail_before_any_work(inputs, tmp_path, local_ray):
    spec = load_spec(_spec_copy(inputs, tmp_path, **{"[resources]": "[resources]\ngpus_per_actor = 1"}))
    with pytest.raises(FaketInputError, match="GPU"):
        run(spec, say=lambda m: None)
    assert not (tmp_path / "run.zarr").exists()


def test_one_actor_per_gpu_with_declared_gpus(inputs, tmp_path, test_weights, local_ray, monkeypatch):
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
    spec = load_spec(_spec_copy(inputs, tmp_path, **{"actors = 2\n": "",
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
    assert np.abs(got - _reference(spec.store, "tomo_000", test_weights)).max() <= 1e-5


def test_gpu_actors_start_during_the_prepare_stage(inputs, tmp_path, test_weights, local_ray, monkeypatch):
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
    spec = load_spec(_spec_copy(inputs, tmp_path, **{"actors = 2\n": "", 'export = "': '# export = "'}))
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
        assert np.abs(got - _reference(spec.store, name, test_weights)).max() <= 1e-5
    # a task's CPUs come back a moment after its result: the count waits for them
    ray.get(ray.remote(num_cpus=3)(lambda: 1).remote())
    assert free_cpus(1) == 3 and free_cpus(1, reserved=1) == 2 and free_cpus(2) == 1


def test_gpu_actors_stylize_a_prepared_tomogram_while_the_next_one_prepares(inputs, tmp_path, test_weights,
                                                                          local_ray, monkeypatch):
    """With GPU actors up (one GPU declared to Ray, device="cpu") and several tomograms, each
    tomogram's NST starts as soon as it is prepared: tomo_001's prepare task is held until a tilt
    of tomo_000 is stylised (a watcher opens the gate; the staged run would time out), and the
    results are the single-process ones."""
    import threading
    import time

    from faket_cluster._hooks import HOLD_PREPARE_ENV
    from faket_cluster.engine import init_ray

    gate = tmp_path / "gate"
    monkeypatch.setenv(HOLD_PREPARE_ENV, f"tomo_001:{gate}")
    init_ray(num_cpus=3, num_gpus=1)
    spec = load_spec(_spec_copy(inputs, tmp_path, **{"actors = 2\n": "", 'export = "': '# export = "'}))
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
        assert np.abs(got - _reference(spec.store, name, test_weights)).max() <= 1e-5
        assert root[name].attrs["ome"]["multiscales"], name  # OME-Zarr metadata, written as it was prepared


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_fresh_local_run_refuses_a_plan_this_machine_cannot_meet_before_any_work(inputs, tmp_path, local_ray):
    """A fresh store is laid out, and its first tomogram prepared, while a local Ray starts: an
    actor plan this machine cannot meet ends the run first, in one line, with no store and no Ray."""
    assert not ray.is_initialized()
    spec = load_spec(_spec_copy(inputs, tmp_path, **{"actors = 2\n": "actors = 2\ncpus_per_actor = 4096\n"}))
    with pytest.raises(FaketInputError, match=r"cpus_per_actor = 4096\.0 but the cluster has \d+ CPUs") as err:
        run(spec, say=lambda m: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run.zarr").exists() and not ray.is_initialized()


def test_a_failed_prepare_beside_the_start_leaves_the_tomogram_to_its_task():
    from concurrent.futures import Future

    from faket_cluster.stages import prepared_beside_start

    failed: Future = Future()
    failed.set_exception(OSError("disk full"))
    said: list[str] = []
    assert prepared_beside_start(("tomo_000", failed), frozenset({"x"}), said.append) == (frozenset({"x"}), {})
    assert said == ["preparing tomo_000 beside Ray's start failed (OSError: disk full); a task tries again"]
    done: Future = Future()
    done.set_result({"name": "tomo_000", "n": 7, "seconds": {"noise": 0.5}})
    assert prepared_beside_start(("tomo_000", done), frozenset(), said.append) == (
        frozenset({"tomo_000"}), {"noise": 0.5})
    assert prepared_beside_start(None, frozenset({"x"}), said.append) == (frozenset({"x"}), {})


def test_more_gpu_actors_than_gpus_is_refused_before_any_work(inputs, tmp_path, local_ray):
    """Ray would wait for ever for a third GPU: the plan says so in one line, before the store exists."""
    from faket_cluster.engine import init_ray

    init_ray(num_cpus=2, num_gpus=2)
    spec = load_spec(_spec_copy(inputs, tmp_path, **{"actors = 2\n": ""}))
    with pytest.raises(FaketInputError, match=r"3 GPU actors .* need 3 GPUs but the cluster has 2") as err:
        run(spec, actors=3, say=lambda m: None)
    assert "\n" not in str(err.value) and "at most 2 actors" in str(err.value)
    assert not (tmp_path / "run.zarr").exists()


def _dashboard_missing() -> str | None:
    """Why this Ray cannot start its dashboard (a minimal or slimmed Ray, as the GPU bundle's), or None."""
    import ray._private.utils as ray_utils

    return ray_utils.get_dashboard_dependency_error()


@pytest.mark.skipif(_dashboard_missing() is not None,
                    reason="`ray job submit` needs Ray's dashboard, whose packages this Ray lacks")
def test_ray_job_submit_end_to_end(inputs, tmp_path, test_weights):
    """A head on loopback (`ray start --head --block`), `ray job submit ... -- faket run SPEC`."""
    import urllib.request

    ray_cli = console_script("ray")
    gcs, dash = _free_port(), _free_port()
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from swapping 127.0.0.1 for a routable address
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    # Every port the head would take by default on its own (agent 52365, client 10001, ...) is a
    # free one: a Ray left on this machine (another user's, or a killed run's) must not break the test.
    own_ports = [f"--{flag}={_free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "ray-client-server-port",
        "runtime-env-agent-port", "metrics-export-port")]
    with (tmp_path / "head.log").open("w") as log:  # the child keeps its own copy of the descriptor
        head = subprocess.Popen(
            [ray_cli, "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
             "--num-cpus=2", "--object-store-memory=200000000", "--disable-usage-stats", *own_ports],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2)
                break
            except OSError:
                if head.poll() is not None:  # say why: e.g. a Ray without its dashboard's packages
                    pytest.fail("ray head exited: " + (tmp_path / "head.log").read_text()[-1500:])
                time.sleep(1)
        spec = _spec_copy(inputs, tmp_path)
        for _ in range(30):  # the dashboard answers before its job agent is up: Ray says "try again later"
            res = subprocess.run(
                [ray_cli, "job", "submit", f"--address=http://127.0.0.1:{dash}", f"--working-dir={ROOT}",
                 "--", FAKET, "run", str(spec)],
                env=env, capture_output=True, text=True, timeout=400)
            if res.returncode == 0 or "No available agent to submit job" not in res.stderr + res.stdout:
                break
            time.sleep(2)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "succeeded" in (res.stdout + res.stderr).lower()
    finally:
        try:  # the head's whole process group: what it started too
            os.killpg(head.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
    root = open_store(tmp_path / "run.zarr", mode="r")
    assert root.attrs["last_run"]["noise_model_beside_start"] is False   # a cluster: the Ray task's
    for name in ("tomo_000", "tomo_001"):
        assert done_mask(root[name], "faket").all()
        got = np.asarray(root[name]["faket"][:])
        assert np.abs(got - _reference(tmp_path / "run.zarr", name, test_weights)).max() <= 1e-5
        assert (tmp_path / "mrc" / name / "faket.mrc").exists()
        assert (tmp_path / "mrc" / name / "angles.tlt").exists()


def _actor_on(node_id: str) -> bool:
    """Whether a live NSTWorker actor runs on that node (Ray's global state, no dashboard)."""
    from ray._private import state

    return any(a.get("State") == "ALIVE" and a.get("Address", {}).get("NodeID") == node_id
               and "NSTWorker" in str(a.get("ActorClassName", "")) for a in state.actors().values())


def test_node_removed_mid_run(inputs, tmp_path, test_weights, local_ray, monkeypatch):
    """Two nodes on one machine; the node of one actor goes away; its work is redone elsewhere.
    The HOLD hook keeps both actors waiting after their first task until the node is gone."""
    import threading

    from ray.cluster_utils import Cluster

    release = tmp_path / "release"
    monkeypatch.setenv(HOLD_ENV, str(release))             # the nodes' workers inherit it

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": 150 * 2**20, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20)
    try:
        spec = load_spec(_spec_copy(inputs, tmp_path, **{"[resources]": "[resources]\nspread = true",
                                                          'export = "': '# export = "'}))
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(
            run(spec, address=cluster.address, say=lambda m: None)), daemon=True)
        thread.start()
        deadline = time.time() + 240
        removed = False
        while thread.is_alive() and time.time() < deadline:
            if spec.store.exists():
                try:
                    root = open_store(spec.store, mode="r")
                    done = sum(int(done_mask(root[n], "faket").sum()) for n in ("tomo_000", "tomo_001")
                               if n in root and "faket" in root[n])
                except Exception:
                    done = 0
                if done >= 2 and not removed and _actor_on(worker.node_id):
                    cluster.remove_node(worker)
                    removed = True
                    release.touch()
            time.sleep(0.2)
        thread.join(timeout=240)
        assert removed and result.get("done_now") == 14, result.get("failed")
        # Work went on on a node that stayed. (A third worker PID, from Ray restarting the lost
        # actor elsewhere, was asserted before; under load the surviving actor can finish every
        # remaining tilt before the restart is up, so that clause failed once in CI-like runs.)
        assert set(result["nodes"]) - {worker.node_id}, result["nodes"]
        root = open_store(spec.store, mode="r")
        for name in ("tomo_000", "tomo_001"):
            got = np.asarray(root[name]["faket"][:])
            assert np.abs(got - _reference(spec.store, name, test_weights)).max() <= 1e-5
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_manifest_expands_tomograms_styles_seeds(inputs, tmp_path):
    text = inputs.read_text() + '''
[[manifest]]
name = "many"
volume = "inputs/tomo_000_volume.mrc"
angles = "inputs/angles.tlt"
seeds = [5, 6, 7]
styles = ["inputs/reference.mrc", "inputs/reference.mrc"]
'''
    p = inputs.parent / "manifest.toml"
    p.write_text(text)
    spec = load_spec(p)
    names = [t.name for t in spec.tomograms]
    assert len(names) == 2 + 6 and "many_st1_s7" in names
    assert {t.seed for t in spec.tomograms if t.name.startswith("many")} == {5, 6, 7}


def test_a_tilt_that_keeps_failing_fails_the_run_after_the_rest(inputs, tmp_path, local_ray,
                                                                 monkeypatch):
    """One policy: the tilt is attempted max_task_retries + 1 times, then recorded; the rest completes."""
    from faket_cluster.engine import FAIL_TILT_ENV, RunFailed, raise_if_failed

    monkeypatch.setenv(FAIL_TILT_ENV, "tomo_001:3")
    spec = load_spec(_spec_copy(inputs, tmp_path, **{"[resources]": "[resources]\nmax_task_retries = 1\n"
                                                                      "retry_backoff = 0.05"}))
    summary = run(spec, say=lambda m: None)
    [failed] = summary["failed"]
    assert failed["tomogram"] == "tomo_001" and failed["stage"] == "stylize:3"
    assert "injected failure" in failed["error"] and "(2 attempts)" in failed["error"]
    with pytest.raises(RunFailed, match="tomogram tomo_001 stylize:3"):
        raise_if_failed(summary)
    root = open_store(spec.store, mode="r")
    assert done_mask(root["tomo_000"], "faket").all()
    assert done_mask(root["tomo_001"], "faket").tolist() == [True] * 3 + [False] + [True] * 3
    assert "stylize:3" in root["tomo_001"].attrs["failures"] and root["tomo_000"].attrs["failures"] == {}
    # the complete tomogram is reconstructed and exported; the failed one is not
    assert done_mask(root["tomo_000"], "reconstruction").all()
    assert not done_mask(root["tomo_001"], "reconstruction").any()
    assert (tmp_path / "mrc" / "tomo_000" / "faket.mrc").exists()
    assert not (tmp_path / "mrc" / "tomo_001").exists()
    monkeypatch.delenv(FAIL_TILT_ENV)
    ray.shutdown()                                         # a fresh Ray, without the failure hook
    again = run(spec, say=lambda m: None)                  # the cause fixed: a rerun finishes
    assert again["failed"] == [] and again["done_now"] == 1
    assert open_store(spec.store, mode="r")["tomo_001"].attrs["failures"] == {}


def test_installed_under_its_own_name(tmp_path):
    """The engine installs as faket_cluster (no top-level `cluster`) and adds `faket run`."""
    res = subprocess.run([sys.executable, "-c", "import faket_cluster.engine\nimport cluster"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "No module named 'cluster'" in res.stderr, res.stderr
    res = subprocess.run([FAKET, "run", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "run spec" in res.stdout.lower(), res.stderr


def test_tomograms_styled_by_one_file_share_one_style_stack(inputs, tmp_path):
    """The first tomogram of a style holds its stack; the others are prepared only with it; a
    store that holds copies already keeps them; a holder left out of the spec is not relied on."""
    import dataclasses

    from faket.pipeline import Stage
    from faket.store import create_stack, write_tilt
    from faket.weights import resolve_weights
    from faket_cluster.layout import holders, lay_out
    from faket_cluster.stages import prepared

    spec = load_spec(_spec_copy(inputs, tmp_path))
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


def test_resume_with_changed_settings_refuses_naming_the_key(inputs, tmp_path):
    """A store made with one step size is not resumed with another; --restart-stage redoes it."""
    from faket.pipeline import Stage
    from faket.store import write_tilt
    from faket.weights import resolve_weights
    from faket_cluster.layout import check_resume, lay_out

    spec = load_spec(_spec_copy(inputs, tmp_path))
    identity = resolve_weights(spec.weights).identity
    root = open_store(spec.store, mode="w")
    lay_out(root, spec, identity)
    write_tilt(root["tomo_000"], "faket", 0, np.ones((32, 32), np.float32))
    recorded = dict(root["tomo_000"].attrs["settings"])
    changed = _spec_copy(inputs, tmp_path, **{"[reconstruction]": "[nst]\nstep_size = 0.05\n\n[reconstruction]"})
    new = load_spec(changed)                               # (the next copy reuses the file name)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    res = subprocess.run([FAKET, "run", str(changed)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    [line] = lines
    assert "tomo_000" in line and "step_size 0.15 -> 0.05" in line and "--restart-stage stylize" in line
    assert dict(open_store(spec.store, mode="r")["tomo_000"].attrs["settings"]) == recorded
    # a changed execution setting (batch size) is no change of the method
    check_resume(root, load_spec(_spec_copy(inputs, tmp_path, **{"batch = 1": "batch = 3"})), identity)
    # restarting the stage on purpose: its done flags are cleared and the new settings recorded
    lay_out(root, new, identity, restart=Stage.STYLIZE)
    assert not done_mask(root["tomo_000"], "faket").any()
    assert root["tomo_000"].attrs["settings"]["stylize"]["step_size"] == 0.05
    assert root["tomo_000"].attrs["settings"]["prepare"] == recorded["prepare"]
    check_resume(root, new, identity)


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


def test_a_prepare_beside_the_start_writes_what_needs_no_noise_model_while_it_is_estimated(inputs, tmp_path):
    """stages.prepare_beside_start: the first tomogram's noiseless and style stacks are written
    while the noise model is still being estimated, its noise once the model is there; the
    store then equals one prepared in one piece with the model at hand."""
    from concurrent.futures import Future

    from faket_cluster.stages import prepare_beside_start
    from faket_cluster.tasks import prepare_tomogram

    spec = load_spec(_spec_copy(inputs, tmp_path / "a"))
    early: Future = Future()
    name, prep = prepare_beside_start(spec, early, _laid_out(spec))
    g = open_store(str(spec.store), mode="r")[name]
    _wait_written(g, prep, ("noiseless", "style"))
    time.sleep(0.2)
    assert not done_mask(g, "noisy").any() and not prep.done()  # the noise waits for its model
    early.set_result(_model(spec))
    phases = prep.result(timeout=120)["seconds"]
    assert list(phases) == ["noiseless", "style", "labels", "model", "noise", "ranges", "attrs"]
    assert done_mask(g, "noisy").all() and done_mask(g, "content").all()

    whole = load_spec(_spec_copy(inputs, tmp_path / "b"))
    _laid_out(whole)
    prepare_tomogram(str(whole.store), whole.tomograms[0], early.result()["model"], whole.content_sigma, 2)
    ref = open_store(str(whole.store), mode="r")[name]
    for a in ("noiseless", "style", "noisy", "content"):
        np.testing.assert_array_equal(g[a][:], ref[a][:], err_msg=a)
    assert open_store(str(spec.store), mode="r")[name].attrs["ranges"] == ref.attrs["ranges"]


def test_a_failed_noise_model_leaves_the_stacks_written_before_it_for_the_retry(inputs, tmp_path):
    """Where the estimate beside the start fails, the prepare raises its error after writing the
    stacks that need no model; the prepare task's retry keeps them and writes the rest."""
    from concurrent.futures import Future

    from faket_cluster.stages import prepare_beside_start
    from faket_cluster.tasks import prepare_tomogram

    spec = load_spec(_spec_copy(inputs, tmp_path))
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
def test_the_driver_makes_the_style_targets_while_ray_and_the_actor_start(inputs, tmp_path, test_weights,
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
    spec = load_spec(_spec_copy(inputs, tmp_path, **{"actors = 2\n": "", 'export = "': '# export = "', **edits}))
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
        assert np.abs(got - _reference(spec.store, name, test_weights)).max() <= 1e-5


def test_the_driver_makes_style_targets_only_on_a_gpu_it_can_share(inputs, tmp_path, monkeypatch):
    """_ahead_plan.style_targets_beside_start: nothing for CPU actors, nothing without a GPU in the
    driver that other processes may use too (unless a test asks for the CPU), nothing when
    turned off; none of these waits for the store's layout."""
    from concurrent.futures import Future

    import torch

    from faket_cluster import _ahead_plan
    from faket_cluster._hooks import DRIVER_AHEAD_CPU_ENV, NO_DRIVER_AHEAD_ENV
    from faket_cluster.fleet import ActorPlan

    spec = load_spec(_spec_copy(inputs, tmp_path))
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
