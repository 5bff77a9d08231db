"""The first tomogram's attributes written beside its NST (faket_cluster._meta): the NST tasks
carry its stacks' value ranges, so its NST does not wait for that write; a write that fails
fails the tomogram's prepare step, and a rerun finishes it."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from engine_support import single_process_result, spec_copy  # noqa: E402
from faket_cluster._hooks import ATTRS_ENV  # noqa: E402
from faket_cluster._meta import GroupAttributes  # noqa: E402
from faket_cluster.engine import RunFailed, raise_if_failed, run  # noqa: E402
from faket_cluster.spec import load_spec  # noqa: E402
from faket.nst import stack_range  # noqa: E402
from faket.store import done_mask, open_store  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_env")


def test_a_task_carries_ranges_only_where_the_driver_holds_all_it_needs():
    """for_task: the style range from the tomogram holding the style stack, each member's own;
    None where one is unknown (the actor then reads the store's attributes)."""
    meta = GroupAttributes(root=None, held_by={"a": {}, "b": {"style": "a", "noiseless": "c"}, "c": {}})
    meta.learn("a", {"ranges": {"content": [0.0, 1.0], "noisy": [-1.0, 2.0], "style": [3.0, 4.0]}})
    meta.learn("b", {"ranges": {"content": [0.5, 1.5], "noisy": [-2.0, 2.0]}})
    meta.learn("x", {"model": {}})  # a result without ranges: nothing learnt
    assert meta.for_task(("a", "b")) == {
        "style": [3.0, 4.0],
        "members": {"a": meta.ranges["a"], "b": meta.ranges["b"]},
    }
    assert meta.for_task(("b",))["members"] == {"b": meta.ranges["b"]}  # its holder's style range
    assert meta.for_task(("b", "c")) is None  # c's ranges are not known here
    assert meta.for_task(("c",)) is None and "x" not in meta.ranges


def test_the_nst_runs_before_the_first_tomograms_attributes_are_written(engine_spec, tmp_path, test_weights,
                                                                       local_ray, monkeypatch):
    """The write of tomo_000's attributes waits (test hook) until one of its tilts is stylised:
    the run completes without a failure or a retry, so no task needed them from the store; the
    results equal faket's single process, and the attributes are whole after the run."""
    monkeypatch.setenv(ATTRS_ENV, "tomo_000")
    spec = load_spec(spec_copy(engine_spec, tmp_path))
    summary = run(spec, say=lambda m: None)
    assert summary["failed"] == [] and summary["done_now"] == 14
    assert summary["prepared_beside_start"] == ["tomo_000"]
    line = summary["timeline"]
    assert line["prepared_beside_start"] < min(a["first_task"] for a in line["actors"]) < line["attrs_written"]
    assert line["attrs_written"] < summary["seconds"]
    assert list(summary["phase_seconds"]["prepare"])[-2:] == ["ranges", "attrs"]
    root = open_store(spec.store, mode="r")
    g = root["tomo_000"]
    for key in ("content", "noisy", "style"):  # the ranges recorded are the stacks' own
        assert g.attrs["ranges"][key] == [float(x) for x in stack_range(np.asarray(g[key][:]))], key
    assert g.attrs["voxel_size"] > 0 and len(g.attrs["angles"]) == 7 and "ome" in g.attrs
    for name in ("tomo_000", "tomo_001"):
        got = np.asarray(root[name]["faket"][:])
        assert np.abs(got - single_process_result(spec.store, name, test_weights)).max() <= 1e-5


def test_a_failed_attributes_write_fails_the_prepare_step_and_a_rerun_finishes(engine_spec, tmp_path,
                                                                              local_ray, monkeypatch):
    """The write fails (test hook): tomo_000 is reported failed at its prepare step, not exported,
    and not counted as prepared by a resume; tomo_001 completes. The rerun prepares the two again
    (their tilts are all there: only their attributes are written) and exports tomo_000."""
    monkeypatch.setenv(ATTRS_ENV, "tomo_000:fail")
    spec = load_spec(spec_copy(engine_spec, tmp_path))
    summary = run(spec, say=lambda m: None)
    [failed] = summary["failed"]
    assert failed["tomogram"] == "tomo_000" and failed["stage"] == "prepare"
    assert "attributes could not be written" in failed["error"] and ATTRS_ENV in failed["error"]
    with pytest.raises(RunFailed, match="tomogram tomo_000 prepare"):
        raise_if_failed(summary)
    root = open_store(spec.store, mode="r")
    assert done_mask(root["tomo_000"], "faket").all() and "ranges" not in root["tomo_000"].attrs
    assert not (tmp_path / "mrc" / "tomo_000").exists() and (tmp_path / "mrc" / "tomo_001" / "faket.mrc").exists()
    before = np.asarray(root["tomo_000"]["faket"][:])
    monkeypatch.delenv(ATTRS_ENV)
    ray.shutdown()
    again = run(spec, say=lambda m: None)
    # tomo_001 is not prepared either by a resume's rule: the style range it needs is tomo_000's
    assert again["failed"] == [] and again["done_now"] == 0 and again["prepared_before"] == []
    root = open_store(spec.store, mode="r")
    assert "ranges" in root["tomo_000"].attrs and (tmp_path / "mrc" / "tomo_000" / "faket.mrc").exists()
    np.testing.assert_array_equal(np.asarray(root["tomo_000"]["faket"][:]), before)
