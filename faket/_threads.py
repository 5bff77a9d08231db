"""Per-tilt work on threads: numpy, FFTs, random draws and codecs run without Python's lock.

Each thread may keep reusable buffers (:func:`scratch`): a 4096^2 float64 array allocated
fresh is mapped fresh and page-faulted in by the kernel, a fifth to a third of the noise
phase's time, and its threads then contend for the process's memory map.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
_local = threading.local()  # each thread's scratch buffers, by name


def scratch(name: str, n: int, dtype: Any) -> np.ndarray:
    """This thread's reusable 1-D buffer ``name`` of ``n`` items (grown when needed, never
    shrunk; kept until the thread ends or a :func:`scratch_released` block around it ends).

    Its contents are whatever the thread last put there: callers write before they read and
    never return it (or a view of it) to code that might keep it.
    """
    buf = getattr(_local, name, None)
    if buf is None or buf.size < n or buf.dtype != dtype:
        vars(_local).pop(name, None)
        del buf  # the old one is freed before the new one is made
        buf = np.empty(n, dtype)
        setattr(_local, name, buf)
    view = buf[:n]
    view.flags.writeable = True
    return view


@contextlib.contextmanager
def scratch_released() -> Iterator[None]:
    """The scratch buffers this thread makes inside the block are dropped when it ends."""
    before = set(vars(_local))
    try:
        yield
    finally:
        for name in set(vars(_local)) - before:
            delattr(_local, name)


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
        with scratch_released():  # a pool's threads take theirs with them; this thread is kept
            for item in items:
                steps(work(item))
        return
    with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="faket-prepare") as pool:
        for done in as_completed([pool.submit(work, item) for item in items]):
            steps(done.result())
