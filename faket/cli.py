"""The ``faket`` command line: one typer app, one subcommand per stage.

Bad input ends with one line on stderr (``faket: error: ...``) and exit code
2; outputs are written to a temporary name and renamed when complete, with
their provenance in ``<output>.json``. Heavy modules are imported inside the
commands so that ``faket --help`` and short commands start quickly.
"""

from __future__ import annotations

import typer

from ._cli import data, results, stages  # noqa: F401  (importing registers the commands)
from ._cli.base import app
from .console import run_app

__all__ = ["app", "main", "run_app", "load_plugins"]

#: Entry-point group of commands that other installed packages add to ``faket``
#: (the Ray engine adds ``faket run``); each entry is a function ``register(app)``.
PLUGIN_GROUP = "faket.commands"


def load_plugins(typer_app: typer.Typer) -> dict:
    """Add the commands of installed plugins; returns their exit codes for typed failures."""
    from importlib.metadata import entry_points

    failures: dict = {}
    for ep in entry_points(group=PLUGIN_GROUP):
        failures.update(ep.load()(typer_app) or {})
    return failures


def main() -> None:
    """Console entry point of ``faket``."""
    failures = load_plugins(app)
    run_app(app, "faket", failures)


if __name__ == "__main__":
    main()
