"""The reproducible switch and the record of the arithmetic a result was computed with.

Why a switch: the NST's first Adam step moves each pixel by about
``±step_size``, the sign of its gradient. Where a gradient is near zero, the
round-off of one CPU kernel against another (AVX2 against AVX-512, a
different summation order) can flip that sign and move the pixel by
``2 * step_size``. So results are exact only for one kernel level and one
intra-op thread count (the thread count splits sums and so sets their
order: measured 4e-4 to 1.5e-3 max abs off the golden fixtures with 1, 4, 8
or 16 threads instead of 2). :data:`CPU_PIN` pins PyTorch's, oneDNN's and
MKL's CPU kernels to AVX2, the level every x86-64 CPU of the last decade has,
and the intra-op threads to :data:`PIN_THREADS`: what the golden fixtures were
made with. On CUDA the switch turns TF32 off and asks for deterministic
algorithms.

The CPU variables are read by torch when it first dispatches a kernel, so
they must be in the environment before torch computes anything: set
``FAKET_REPRODUCIBLE=1`` before starting Python (importing :mod:`faket` then
pins them), or call :func:`enable` before importing torch. The CLI's
``--reproducible`` option calls :func:`enable` before any torch import.

This module imports torch only inside functions.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, MutableMapping

from .errors import FaketInputError

#: The user's switch.
ENV_VAR = "FAKET_REPRODUCIBLE"
#: Accepted values of :data:`ENV_VAR` (case-insensitive; unset or empty means off).
TRUE_VALUES = ("1", "true")
FALSE_VALUES = ("0", "false")
#: Intra-op threads under the switch (the golden fixtures' count; sums split by threads).
PIN_THREADS = 2
#: Environment that pins the CPU arithmetic: AVX2 kernels (ATen's dispatch, oneDNN's JIT,
#: MKL's conditional numerical reproducibility) and the intra-op thread count.
CPU_PIN = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
    "OMP_NUM_THREADS": str(PIN_THREADS),
}
#: cuBLAS needs a fixed workspace for deterministic results (CUDA >= 10.2).
CUBLAS_WORKSPACE = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
#: The ``--reproducible`` option's help, the same in every command that has it.
HELP = (
    f"Reproducible arithmetic, as {ENV_VAR}=1: CPU kernels pinned to AVX2 and {PIN_THREADS} threads "
    "(exact to the golden fixtures on any x86-64 CPU); on CUDA strict float32 and deterministic algorithms."
)
#: What ``torch.backends.cpu.get_cpu_capability()`` reports under the pin.
PINNED_CAPABILITY = "AVX2"


def _is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def requested(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether :data:`ENV_VAR` asks for reproducible arithmetic.

    Raises :class:`FaketInputError` (one line naming the variable and the allowed
    values) for any other value.
    """
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "").strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES or value == "":
        return False
    allowed = ", ".join(TRUE_VALUES + FALSE_VALUES)
    raise FaketInputError(
        f"environment variable {ENV_VAR}={env.get(ENV_VAR)!r} is not allowed: "
        f"use one of {allowed} (or leave it unset)"
    )


def switch_environment() -> dict[str, str]:
    """The environment variables the switch sets (for subprocesses and Ray actors)."""
    env = {ENV_VAR: "1", **CUBLAS_WORKSPACE}
    if _is_x86_64():
        env.update(CPU_PIN)
    return env


def pin_from_environment(environ: MutableMapping[str, str] | None = None) -> bool:
    """At import of :mod:`faket`: apply the switch if :data:`ENV_VAR` asks for it.

    An invalid value is left for :func:`requested` to report where it can end
    a command cleanly. Returns whether the switch is on.
    """
    env = os.environ if environ is None else environ
    try:
        on = requested(env)
    except FaketInputError:
        return False
    if on:
        env.update(switch_environment())
    return on


def enable() -> None:
    """Turn the switch on for this process and its children.

    Must run before torch computes anything on the CPU. If torch has already
    chosen other CPU kernels, raises :class:`FaketInputError` saying to set
    :data:`ENV_VAR` before starting Python.
    """
    os.environ.update(switch_environment())
    if "torch" in sys.modules and _is_x86_64():
        sys.modules["torch"].set_num_threads(PIN_THREADS)
        level = cpu_capability()
        if level != PINNED_CAPABILITY:
            raise FaketInputError(
                f"torch already chose {level} CPU kernels before the reproducible switch: "
                f"set {ENV_VAR}=1 in the environment before starting Python"
            )


def cpu_capability() -> str:
    """The CPU kernel level torch dispatches to (``DEFAULT``, ``AVX2``, ``AVX512``, ...)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def check_precision(precision: str) -> bool:
    """Refuse a precision mode the switch cannot honour; returns whether the switch is on."""
    on = requested()
    if on and precision not in ("auto", "float32"):
        raise FaketInputError(
            f"precision {precision!r} cannot be reproducible: use --precision "
            f"float32 with {ENV_VAR}=1 / --reproducible, or drop the switch"
        )
    return on


def resolve_precision(precision: str, device: Any) -> str:
    """The arithmetic a precision mode means on ``device``.

    ``auto`` is the published code's arithmetic: on CUDA ``tf32`` (cuDNN
    convolutions in TF32, as PyTorch's defaults and the published code; the
    Gram matmuls in TF32 too, see :func:`configure_device`); on the CPU, and
    under the reproducible switch, strict ``float32``.
    """
    import torch

    on = check_precision(precision)
    if precision != "auto":
        return precision
    return "tf32" if torch.device(device).type == "cuda" and not on else "float32"


def configure_device(device: Any, precision: str) -> str:
    """Set torch's global arithmetic flags for ``device`` and a precision mode.

    ``tf32`` lets cuDNN convolutions use TF32, as PyTorch's defaults (and so
    the published code) do, and the Gram matrices' matmuls too (PyTorch's
    default keeps those float32): that took 4096^2 from 0.478 to 0.437 s per
    tilt on an H100 and moved the result by 4.2e-4 at most, far inside the
    1e-2 the default must stay within of the published GPU output (see
    README, "Precision"). ``float32`` turns TF32 off; ``bf16`` (the network
    under bfloat16 autocast) uses TF32 matmuls too. With the switch on: strict
    float32, deterministic algorithms, no cuDNN autotuning. Returns the
    resolved mode (see :func:`resolve_precision`).
    Raises :class:`FaketInputError` for a mode other than auto/float32 under the switch.
    """
    import torch

    on = requested()
    mode = resolve_precision(precision, device)
    if on:  # warn_only: an op without a deterministic kernel warns rather than ends the run
        torch.use_deterministic_algorithms(True, warn_only=True)
        if _is_x86_64():
            torch.set_num_threads(PIN_THREADS)
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = mode in ("tf32", "bf16")
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        if on:
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
    return mode


def _cpuinfo(key: str) -> str | None:
    """The first value of ``key`` in /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def host_isa() -> str | None:
    """The widest x86 vector ISA the CPU has (``AVX512``, ``AVX2``, ``AVX``, ``SSE4.1``); None elsewhere."""
    flags = set((_cpuinfo("flags") or "").split())
    for isa, flag in (("AVX512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"), ("SSE4.1", "sse4_1")):
        if flag in flags:
            return isa
    return None


def device_name(device: Any) -> str:
    """A person's name for a torch device: the GPU's model or the CPU's."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(dev.index if dev.index is not None else 0))
    return cpu_model()


def compute_record(device: Any = "cpu", precision: str | None = None) -> dict[str, Any]:
    """What a result was computed with, for provenance and ``faket info``.

    Keys: ``device``, ``device_name``, ``cpu_capability`` (ATen's kernel level in
    use), ``host_isa`` (the CPU's widest vector ISA), ``cpu_pin`` (the pinning
    variables set, if any), ``reproducible``, ``precision`` (the arithmetic used)
    and ``precision_asked`` (the mode asked for, e.g. ``auto``), ``torch``, ``cuda``
    and ``cudnn`` versions (``None`` without CUDA), ``cpu_threads``.
    """
    import torch

    try:
        on = requested()
        mode = resolve_precision(precision, device) if precision else None
    except FaketInputError:
        on, mode = False, precision
    cuda = torch.cuda.is_available()
    return {
        "device": str(device),
        "device_name": device_name(device),
        "cpu_capability": cpu_capability(),
        "host_isa": host_isa(),
        "cpu_pin": {k: os.environ[k] for k in CPU_PIN if k in os.environ},
        "reproducible": on,
        "precision": mode,
        "precision_asked": precision,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda and str(device).startswith("cuda") else None,
        "cpu_threads": torch.get_num_threads(),
    }
