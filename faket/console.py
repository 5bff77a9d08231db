"""Console helpers shared by every command line of the project (``faket`` and the engine).

Messages, warnings and progress go to stderr, so that stdout carries only what a
command prints as its result (a JSON summary, a table).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import typer

from .errors import FaketInputError, Interrupted


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


#: The last stopping signal received (SIGINT or SIGTERM), for the exit code 128 + signal.
_SIGNAL = [0]


def install_interrupt_handlers() -> None:
    """Ctrl-C and SIGTERM both raise ``KeyboardInterrupt`` and remember which signal it was.

    A ``KeyboardInterrupt`` is what Ray's waits turn into an interrupt (another exception
    raised in a signal handler is lost inside them), and what cleanup code expects.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        _SIGNAL[0] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def interrupt_exit_code() -> int:
    """128 + the signal that interrupted the program: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + (_SIGNAL[0] or 2)


def log_dir() -> Path:
    """Where internal errors' tracebacks go: ``FAKET_LOG_DIR``, else ``~/.cache/faket/logs``."""
    return Path(os.environ.get("FAKET_LOG_DIR") or Path.home() / ".cache" / "faket" / "logs")


def _log_traceback(prog: str) -> str:
    """Write the current exception's traceback to a new log file; returns its path (or why not)."""
    import tempfile
    import time
    import traceback

    text = traceback.format_exc()
    name = f"{prog}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(f"{prog} {' '.join(sys.argv[1:])}\n\n{text}")
            return str(folder / name)
        except OSError:
            continue
    return "nowhere (no writable log folder)"


def _usage_line(prog: str, err) -> str:
    """A click usage error as one line, with the command whose --help says more."""
    where = err.ctx.command_path if err.ctx is not None else prog
    return f"{prog}: error: {err.format_message()} (see '{where} --help')"


def _click_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """Click's exception ``name`` from click and from typer's own copy of it (typer >= 0.28)."""
    import importlib

    found = []
    for module in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def run_app(typer_app: typer.Typer, prog: str, failures: dict | None = None) -> None:
    """Run a typer app: every way out is one line on stderr, never a traceback.

    Bad input (:class:`FaketInputError`, a click usage error): exit 2. Ctrl-C / SIGTERM:
    the command's line (``interrupted...``), exit 130 / 143. ``failures``: other exception
    types that end the program with one line, and their exit codes. Anything else is a bug:
    one line naming a log file that holds the traceback, exit 1.
    """
    failures = failures or {}
    no_args, usage, abort = (_click_exceptions(n) for n in ("NoArgsIsHelpError", "UsageError", "Abort"))
    stops: tuple[type[BaseException], ...] = (Interrupted, KeyboardInterrupt, *abort)
    install_interrupt_handlers()
    try:
        from ._procs import chosen
        from .reproducible import requested

        requested()  # a bad FAKET_REPRODUCIBLE ends here, before any work
        chosen()  # and a bad FAKET_TILT_PROCESSES
        code = typer_app(standalone_mode=False)
    except no_args as err:
        err.show()  # type: ignore[attr-defined]
        sys.exit(2)
    except usage as err:
        print(_usage_line(prog, err), file=sys.stderr)
        sys.exit(2)
    except FaketInputError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except stops as err:
        message = err.message if isinstance(err, Interrupted) else "interrupted"
        print(f"{prog}: {message}", file=sys.stderr)
        sys.exit(err.exit_code if isinstance(err, Interrupted) else interrupt_exit_code())
    except tuple(failures) as err:
        print(f"{prog}: failed: {err}", file=sys.stderr)
        sys.exit(failures[type(err)])
    except Exception as err:
        log = _log_traceback(prog)
        print(
            f"{prog}: internal error ({type(err).__name__}: {err}); this is a bug, the traceback is in {log}",
            file=sys.stderr,
        )
        sys.exit(1)
    if code == 130 and _SIGNAL[0]:  # typer turns a KeyboardInterrupt into exit code 130
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(interrupt_exit_code())
    sys.exit(code if isinstance(code, int) else 0)
