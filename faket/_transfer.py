"""Host <-> device transfers that stay off the NST's critical path (a part of faket.nst).

On CUDA, inputs are staged in pinned (page-locked) host memory and copied on a
side stream of their own, so that the next batch's upload runs while the
current batch computes; the compute stream waits for the copies' event only
when it uses them. Results come back through pinned memory too. On the CPU
these are plain conversions. Values are never changed: a transfer is a copy.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, TypeVar

import numpy as np
import torch

_streams: dict[torch.device, Any] = {}
_lock = threading.Lock()
T = TypeVar("T")


@dataclass
class Uploaded:
    """Tensors on a device, possibly still being copied (``event`` marks the copies' end)."""

    tensors: dict[str, Any]
    event: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def ready(self) -> dict[str, Any]:
        """The tensors, usable on the current stream (waits on the device, not on the host)."""
        if self.event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(self.event)
            for t in _leaves(self.tensors):
                t.record_stream(stream)  # the allocator keeps their memory until this stream is done
            self.event = None
        return self.tensors


def _leaves(value: Any) -> Iterator[torch.Tensor]:
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)


def _upload_stream(device: torch.device) -> Any:
    with _lock:
        if device not in _streams:
            _streams[device] = torch.cuda.Stream(device)
        return _streams[device]


def _to_device(value: Any, device: torch.device) -> Any:
    """Arrays (in dicts and lists, any nesting) as float32 tensors on CUDA ``device``; others as they are."""
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_device(v, device) for v in value]
    if not isinstance(value, np.ndarray) and not torch.is_tensor(value):
        return value
    host = value if torch.is_tensor(value) else torch.from_numpy(np.ascontiguousarray(value, np.float32))
    if host.device.type == "cpu" and not host.is_pinned():
        host = host.to(torch.float32).pin_memory()
    return host.to(device, torch.float32, non_blocking=True)


def upload(arrays: Mapping[str, Any], device: str | torch.device) -> Uploaded:
    """Copy the arrays of ``arrays`` (dicts and lists of ``np.ndarray`` allowed) to ``device``.

    Returns at once on CUDA, the copies running on a side stream; call
    :meth:`Uploaded.ready` in the thread that computes before using them.
    Values that are not arrays (ranges, names) pass through unchanged, and so
    does everything for another device (the CPU computes on the arrays themselves).
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return Uploaded(dict(arrays), None, dev)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    stream = _upload_stream(dev)
    with torch.cuda.stream(stream):
        tensors = _to_device(arrays, dev)
        event = torch.cuda.Event()
        event.record(stream)
    return Uploaded(tensors, event, dev)


def to_host(t: torch.Tensor) -> np.ndarray:
    """A float32 numpy array of ``t`` (a CUDA tensor comes back through pinned memory)."""
    if t.device.type != "cuda":
        return t.detach().to(torch.float32).numpy()
    out = torch.empty(t.shape, dtype=torch.float32, pin_memory=True)
    out.copy_(t.detach(), non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return out.numpy()


def read_ahead(load: Callable[[int], T], count: int, enabled: bool) -> Iterator[T]:
    """``load(0), load(1), ...`` with the next one loading in a thread while the caller uses this one."""
    if not enabled or count <= 1:
        for k in range(count):
            yield load(k)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="faket-upload") as pool:
        nxt: Future = pool.submit(load, 0)
        for k in range(count):
            cur = nxt.result()
            if k + 1 < count:
                nxt = pool.submit(load, k + 1)
            yield cur
