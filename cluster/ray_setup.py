"""Connecting to Ray: a cluster (an address, or RAY_ADDRESS inside `ray job submit`) or a local one."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import ray

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to a cluster (address, or RAY_ADDRESS inside `ray job submit`) or start a local one.

    A local Ray binds to 127.0.0.1, has no dashboard, a small object store, and starts its
    Python workers as tasks and actors need them.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=False)
    else:
        # Ray swaps 127.0.0.1 for the host's routable address unless "clusters" are off
        # (its switch for laptops); a local engine serves no other host, so turn them off.
        os.environ[LOOPBACK_ENV] = "0"
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        # "local": always a new instance, never a stale one from /tmp/ray/ray_current_cluster
        with _no_api_server():
            ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus if num_gpus is not None else _visible_gpus(),
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=256 * 2**20,
                _node_ip_address="127.0.0.1",
                # Ray otherwise starts a Python worker per CPU as the driver connects and holds the
                # driver until min(CPUs, cores) have (ray-project/ray#40131): by that rule 16 on a 16-core GPU
                # host, beside the noise model, where a run needs an actor and a task or two
                _system_config={"prestart_worker_first_driver": False},
            )
    # ray.init makes SIGTERM exit quietly (sys.exit(15)): give it back to the console's handler,
    # so that the driver prints how far the run got and exits 143
    from faket.console import install_interrupt_handlers

    install_interrupt_handlers()


@contextmanager
def _no_api_server() -> Iterator[None]:
    """A local start without the dashboard's API server process.

    ``ray.init(include_dashboard=False)`` still starts that process and waits
    for it before it starts the raylet (on a 2-core VM ``ray.init`` took
    5.4-6.1 s with it, 3.7-4.2 s without). Without the dashboard it serves
    only usage statistics, so it is left out while those are off (the
    default here).
    Any other call, or a Ray whose internals differ, goes to Ray as it is.
    """
    from ray._private import services

    original = getattr(services, "start_api_server", None)
    if original is None or os.environ.get("RAY_USAGE_STATS_ENABLED") != "0":
        yield
        return

    def start_api_server(*args, **kwargs):
        if kwargs.get("include_dashboard", args[0] if args else None) is False:
            return None, None  # no URL, no process: what Ray records when none started
        return original(*args, **kwargs)

    services.start_api_server = start_api_server
    try:
        yield
    finally:
        services.start_api_server = original


def local_resources() -> tuple[int, float]:
    """The GPUs and CPUs a local Ray started by :func:`init_ray` will have: to check a plan
    against them before it starts."""
    from ray._private.utils import get_num_cpus

    return _visible_gpus() or 0, float(get_num_cpus())


def _visible_gpus() -> int | None:
    """The CUDA devices torch sees, or None to leave the count to Ray.

    Ray counts GPUs through NVML, which some containers do not expose while
    CUDA works (seen on an H100 machine: Ray found none, torch one).
    """
    try:
        import torch

        return torch.cuda.device_count() or None
    except Exception:  # a broken CUDA set-up: let Ray decide
        return None
