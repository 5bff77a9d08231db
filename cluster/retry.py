"""The engine's one retry policy: which faults are retried, how often, after how long.

Every fault of a task ends up here, whatever raised it: the task's own error
(``RayTaskError``, or a failure the actor reports per tomogram), the actor's
death (``RayActorError``: a crash, an OOM kill, its node gone), a lost object,
a dead node, or a worker that crashed. Ray itself retries nothing (actors are
restarted, tasks are not resubmitted by Ray), so a task is attempted at most
``max_attempts`` times in all, with an exponential backoff between attempts.
An actor that is only restarting (``ActorUnavailableError``) is not the task's
fault: such a call is retried after the same backoff without using up an
attempt, at most ``max_unavailable_waits`` times.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, TypeVar

import ray

from faket.errors import FaketInputError

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a task is attempted and how long the driver waits before a retry.

    max_attempts: attempts in all (1 = no retry).
    backoff_s: wait before the first retry; doubled for each further one.
    backoff_max_s: the longest wait.
    max_unavailable_waits: retries, per task, of calls that found their actor
        restarting; these do not count as attempts.
    """

    max_attempts: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    max_unavailable_waits: int = 12

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt + 1`` (``attempt`` >= 1 failed)."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** max(0, attempt - 1))


def describe(err: BaseException) -> str:
    """One line for a fault: its kind and the last line Ray gives (no traceback)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return f"{type(err).__name__}: {last}"[:300]


def is_transient(err: BaseException) -> bool:
    """Whether a fault says only that the actor is restarting (the task never ran to an error)."""
    import ray.exceptions

    return isinstance(err, ray.exceptions.ActorUnavailableError)


def is_fault(err: BaseException) -> bool:
    """Whether an exception from ``ray.get`` is an engine fault to retry (any Ray error)."""
    import ray.exceptions

    return isinstance(err, ray.exceptions.RayError)


@dataclass
class Attempts:
    """Counts failed attempts per task key; says whether and when to retry."""

    policy: RetryPolicy
    failed: dict[Hashable, int] = field(default_factory=dict)
    last_error: dict[Hashable, str] = field(default_factory=dict)
    waits: dict[Hashable, int] = field(default_factory=dict)

    def record(self, key: Hashable, error: str, transient: bool = False) -> float | None:
        """Record a failure of ``key``; returns the time to retry it at, or None when given up.

        transient: the actor was restarting; retried without using up an attempt
        (up to ``max_unavailable_waits`` times, then it counts like any fault).
        """
        self.last_error[key] = error
        if transient and self.waits.get(key, 0) < self.policy.max_unavailable_waits:
            self.waits[key] = self.waits.get(key, 0) + 1
            return time.monotonic() + self.policy.delay(self.waits[key])
        n = self.failed.get(key, 0) + 1
        self.failed[key] = n
        if n >= self.policy.max_attempts:
            return None
        return time.monotonic() + self.policy.delay(n)


def _next_item(todo: collections.deque, after: dict, results: dict, failures: dict[Any, str]):
    """The first item of ``todo`` that waits for no other item's success (taken off ``todo``);
    items whose prerequisite failed are failed on the way. None when none may start now."""
    for item in list(todo):
        first = after.get(item)
        if first is not None and first in failures:
            todo.remove(item)
            failures[item] = f"it needs {first} first, which failed: {failures[first]}"
        elif first is None or first in results:
            todo.remove(item)
            return item
    return None


def run_tasks(
    submit: Callable[[K], Any],
    items: list[K],
    policy: RetryPolicy,
    at_once: int | None = None,
    on_result: Callable[[K, Any], None] | None = None,
    after: dict[K, K] | None = None,
) -> tuple[dict[K, Any], dict[K, str]]:
    """Run one Ray task per item under the retry policy; returns (results, failures with errors).

    at_once: at most this many items' tasks at a time, in the items' order (default: all);
    on_result(item, result): called here as each item succeeds; after: item -> another item
    (of ``items``) whose task must succeed before its own starts (where that one fails, so
    does the item, without a task).
    """
    attempts = Attempts(policy)
    todo = collections.deque(items)
    limit = at_once or max(1, len(items))
    waiting: dict = {}
    delayed: list[tuple[float, K]] = []
    results: dict[K, Any] = {}
    failures: dict[K, str] = {}
    while todo or waiting or delayed:
        now = time.monotonic()
        for at, item in [d for d in delayed if d[0] <= now]:
            delayed.remove((at, item))
            todo.appendleft(item)  # a retry goes first
        while len(waiting) < limit:
            item = _next_item(todo, after or {}, results, failures)
            if item is None:
                break
            waiting[submit(item)] = item
        if not waiting:
            if not delayed:  # what is left waits for something that is not among the items
                failures.update(
                    {item: f"it needs {(after or {}).get(item)} first, which did not run" for item in todo}
                )
                break
            time.sleep(max(0.0, min(at for at, _ in delayed) - now))
            continue
        ready, _ = ray.wait(list(waiting), num_returns=1, timeout=0.5 if delayed else None)
        for ref in ready:
            item = waiting.pop(ref)
            try:
                results[item] = ray.get(ref)
            except Exception as err:  # FaketInputError from a task, any Ray fault
                if not (is_fault(err) or isinstance(err, FaketInputError)):
                    raise
                retry_at = attempts.record(item, describe(err))
                if retry_at is None:
                    failures[item] = attempts.last_error[item]
                else:
                    delayed.append((retry_at, item))
                continue
            if on_result is not None:
                on_result(item, results[item])
    return results, failures
