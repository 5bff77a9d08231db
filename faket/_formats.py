"""Export formats for particle pickers and tomography tools (see :mod:`faket.export`)."""

from __future__ import annotations

FORMATS: dict = {}
