"""The engine's retry policy (cluster/retry.py): attempts, backoff, restarting actors."""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

from faket_cluster.retry import Attempts, RetryPolicy, is_fault, is_transient, run_tasks  # noqa: E402


@pytest.fixture
def two_cpu_ray(monkeypatch):
    """A local Ray of 2 CPUs (auth off, no usage stats), shut down after the test."""
    from faket_cluster.ray_setup import init_ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_faults_use_up_attempts_with_a_doubling_backoff():
    policy = RetryPolicy(max_attempts=3, backoff_s=1.0, backoff_max_s=3.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]
    a = Attempts(policy)
    t = time.monotonic()
    assert a.record("k", "RayTaskError: boom") >= t + 1.0
    assert a.record("k", "RayTaskError: boom") >= t + 2.0
    assert a.record("k", "RayTaskError: boom") is None           # the third attempt was the last
    assert a.failed["k"] == 3 and a.last_error["k"] == "RayTaskError: boom"


def test_a_restarting_actor_does_not_use_up_attempts():
    a = Attempts(RetryPolicy(max_attempts=2, backoff_s=0.01, max_unavailable_waits=3))
    for _ in range(3):
        assert a.record("k", "ActorUnavailableError: restarting", transient=True) is not None
    assert a.failed.get("k", 0) == 0 and a.waits["k"] == 3
    # past the cap a restarting actor counts like any fault
    assert a.record("k", "ActorUnavailableError: restarting", transient=True) is not None
    assert a.record("k", "ActorUnavailableError: restarting", transient=True) is None
    assert a.failed["k"] == 2


def test_which_errors_are_faults_and_which_transient():
    unavailable = ray.exceptions.ActorUnavailableError("The actor is restarting.", b"\x00" * 16)
    died = ray.exceptions.ActorDiedError()
    assert is_fault(unavailable) and is_transient(unavailable)
    assert is_fault(died) and not is_transient(died)
    assert not is_fault(ValueError("a bug")) and not is_transient(ValueError("a bug"))


def test_run_tasks_keeps_to_its_limit_retries_first_and_reports_each_result(tmp_path, two_cpu_ray):
    """run_tasks with at_once=1 (the pipelined prepare stage): one task at a time, in order; while
    a failed task waits out its backoff the next item runs, and once due the retry goes before
    the items still queued; on_result sees each success as it comes."""
    @ray.remote(num_cpus=1, max_retries=0)
    def work(item: str, folder: str) -> tuple[float, float]:
        import os

        start = time.time()
        time.sleep(0.2)
        marker = os.path.join(folder, item)
        if item == "b" and not os.path.exists(marker):  # b fails its first attempt
            open(marker, "w").close()
            raise ray.exceptions.RayError("b failed once")
        return start, time.time()

    seen: list[str] = []
    results, failures = run_tasks(lambda i: work.remote(i, str(tmp_path)), ["a", "b", "c", "d"],
                                  RetryPolicy(max_attempts=2, backoff_s=0.05), at_once=1,
                                  on_result=lambda item, _: seen.append(item))
    assert failures == {} and seen == ["a", "c", "b", "d"]
    spans = sorted(results.values())
    assert all(end <= nxt_start + 0.05 for (_, end), (nxt_start, _) in zip(spans, spans[1:]))


def test_run_tasks_starts_an_item_after_the_one_it_needs(two_cpu_ray):
    """run_tasks(after=): b starts once a has succeeded, though all may run at once; d, which
    needs c, fails without a task where c fails (a tomogram prepared from another's noiseless
    stack)."""
    @ray.remote(num_cpus=0.5, max_retries=0)
    def work(item: str) -> tuple[float, float]:
        start = time.time()
        time.sleep(0.3)
        if item == "c":
            raise ray.exceptions.RayError("c cannot be made")
        return start, time.time()

    submitted: list[str] = []

    def submit(item: str):
        submitted.append(item)
        return work.remote(item)

    results, failures = run_tasks(submit, ["b", "a", "d", "c"], RetryPolicy(max_attempts=1),
                                  after={"b": "a", "d": "c"})
    assert sorted(results) == ["a", "b"] and results["b"][0] >= results["a"][1]
    assert sorted(failures) == ["c", "d"] and "d" not in submitted
    assert failures["d"].startswith("it needs c first, which failed: ") and "cannot be made" in failures["d"]
