"""Wall seconds per stage or phase, in the order they ran: the run's ``stage_seconds`` and the
tasks' ``phase_seconds``."""

from __future__ import annotations

import time


class StageClock:
    """``lap(name)`` closes the stage that began at the last lap (or at the start)."""

    def __init__(self) -> None:
        self.start = self.mark = time.perf_counter()
        self.laps: dict[str, float] = {}

    def since(self) -> float:
        return time.perf_counter() - self.mark

    def lap(self, name: str, seconds: float | None = None) -> None:
        """Close stage ``name``: the time since the last lap, or ``seconds`` of it (the rest stays open)."""
        took = self.since() if seconds is None else seconds
        self.laps[name] = round(took, 3)
        self.mark += took

    def total(self) -> float:
        return time.perf_counter() - self.start
