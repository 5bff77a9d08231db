"""The stages of a simulation, named once, and what each stage writes.

prepare (phantom, projection, noise) -> stylize (NST) -> reconstruct -> export.
Every front end (the CLI, the demos, the Ray engine) names stages with
:class:`Stage`; the run store records each stage's settings and done flags.
"""

from __future__ import annotations

from enum import Enum


class Stage(str, Enum):
    """A stage of the method, in order."""

    PREPARE = "prepare"
    STYLIZE = "stylize"
    RECONSTRUCT = "reconstruct"
    EXPORT = "export"

    @property
    def arrays(self) -> tuple[str, ...]:
        """The run-store arrays this stage writes (export writes files, not arrays)."""
        return STAGE_ARRAYS[self]

    def and_later(self) -> list[Stage]:
        """This stage and every stage after it (what a restart of it must redo)."""
        order = list(Stage)
        return order[order.index(self) :]


STAGE_ARRAYS: dict[Stage, tuple[str, ...]] = {
    Stage.PREPARE: ("noiseless", "noisy", "content", "style", "labels"),
    Stage.STYLIZE: ("faket",),
    Stage.RECONSTRUCT: ("reconstruction",),
    Stage.EXPORT: (),
}
