"""The engine's retry policy (cluster/retry.py): attempts, backoff, restarting actors."""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

from faket_cluster.retry import Attempts, RetryPolicy, is_fault, is_transient  # noqa: E402


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
