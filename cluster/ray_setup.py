"""Connecting to Ray: a cluster (an address, or RAY_ADDRESS inside `ray job submit`) or a local one."""

from __future__ import annotations

import os

import ray

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to a cluster (address, or RAY_ADDRESS inside `ray job submit`) or start a local one.

    A local Ray binds to 127.0.0.1, has no dashboard and a small object store.
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
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus if num_gpus is not None else _visible_gpus(),
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=256 * 2**20,
            _node_ip_address="127.0.0.1",
        )
    # ray.init makes SIGTERM exit quietly (sys.exit(15)): give it back to the console's handler,
    # so that the driver prints how far the run got and exits 143
    from faket.console import install_interrupt_handlers

    install_interrupt_handlers()


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
