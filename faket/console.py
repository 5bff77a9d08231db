"""Console helpers shared by every command line of the project (``faket`` and the engine).

Messages, warnings and progress go to stderr, so that stdout carries only what a
command prints as its result (a JSON summary, a table).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

import typer

from .errors import FaketInputError


@contextlib.contextmanager
def progress_bar(total: int, what: str, completed: int = 0) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields ``advance(k)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
        console=err_console(),
    ) as bar:
        task = bar.add_task(what, total=total, completed=completed)
        yield lambda k=1: bar.advance(task, k)


def err_console():  # -> rich.console.Console (imported lazily: rich costs start-up time)
    """A rich console on stderr."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def say(msg: str) -> None:
    """A message for a person, on stderr."""
    err_console().print(msg, highlight=False)


def warn(msg: str) -> None:
    """A warning for a person, on stderr."""
    err_console().print(f"[bold yellow]WARNING:[/] {msg}", highlight=False)


def run_app(typer_app: typer.Typer, prog: str, failures: dict | None = None) -> None:
    """Run a typer app: bad input is one line on stderr and exit code 2, no traceback.

    failures: other exception types that end the program with one line, and their exit codes.
    """
    try:
        from .reproducible import requested

        requested()  # a bad FAKET_REPRODUCIBLE ends here, before any work
        typer_app()
    except FaketInputError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except tuple(failures or {}) as err:
        print(f"{prog}: failed: {err}", file=sys.stderr)
        sys.exit((failures or {})[type(err)])
