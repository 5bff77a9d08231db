"""JSON that every reader accepts: no NaN or Infinity (null, with the reason beside it)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def _plain(o: Any) -> Any:
    """NumPy scalars and arrays, and paths, as plain Python values."""
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return o


def _finite(o: Any, reasons: dict[str, str], where: str) -> Any:
    o = _plain(o)
    if isinstance(o, float) and not math.isfinite(o):
        reasons[where or "."] = f"not a finite number ({o}): undefined for this input"
        return None
    if isinstance(o, dict):
        return {k: _finite(v, reasons, f"{where}.{k}" if where else str(k)) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v, reasons, f"{where}[{i}]") for i, v in enumerate(o)]
    return o


def dumps(obj: Any, indent: int | None = 1) -> str:
    """``json.dumps`` with every NaN or infinity written as ``null``.

    A dict at the top gets ``"null_reasons"``: for each value made null, its path
    (``metrics.psnr``, ``values[3]``) and why. Other objects are written with ``str``.
    """
    reasons: dict[str, str] = {}
    clean = _finite(obj, reasons, "")
    if reasons and isinstance(clean, dict):
        clean["null_reasons"] = reasons
    return json.dumps(clean, indent=indent, allow_nan=False, default=lambda o: str(_plain(o)))
