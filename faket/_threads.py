"""Per-tilt work on threads: numpy, FFTs, random draws and codecs run without Python's lock."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def for_each(
    work: Callable[[T], int | None],
    items: Sequence[T],
    workers: int = 1,
    advance: Callable[[], None] | None = None,
) -> None:
    """``work(item)`` for every item, on up to ``workers`` threads; ``advance()`` in this thread
    after each, once per step the item did (``work``'s return value; None counts as 1).

    The per-tilt work of the prepare stage (reading, FFTs, random draws,
    compression) runs in numpy and codecs without Python's lock, so threads
    scale with cores. The first error is raised once the running items end.
    """

    def steps(result: int | None) -> None:
        for _ in range(1 if result is None else result):
            if advance is not None:
                advance()

    if workers <= 1 or len(items) <= 1:
        for item in items:
            steps(work(item))
        return
    with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="faket-prepare") as pool:
        for done in as_completed([pool.submit(work, item) for item in items]):
            steps(done.result())


def beside(work: Callable[[], T], name: str) -> Future[T]:
    """``work()`` in a daemon thread, started now: its result, or what it raised, in a Future.

    For work that overlaps a wait of the caller (a local Ray starting); a daemon thread, so
    a caller that exits early (bad input) does not wait for it.
    """
    result: Future[T] = Future()

    def body() -> None:
        try:
            result.set_result(work())
        except BaseException as err:  # the caller decides: retry, fall back or raise
            result.set_exception(err)

    threading.Thread(target=body, name=name, daemon=True).start()
    return result
