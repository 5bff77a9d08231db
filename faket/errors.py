"""Errors that the CLI turns into one clear line and exit code 2."""

from __future__ import annotations


class FaketInputError(ValueError):
    """Bad user input: a missing or broken file, a wrong shape, an impossible setting.

    The message is one line that names what is wrong, which file, and what to do.
    """


class Interrupted(BaseException):
    """A command stopped by Ctrl-C (exit 130) or SIGTERM (exit 143), with the line to print.

    A command raises it from the ``KeyboardInterrupt`` the signal handlers of
    :func:`faket.console.run_app` raise, to say how far it got (e.g. how many tilts are done
    and how to resume). A ``BaseException``, so no ``except Exception`` swallows it (nor typer,
    which ends a ``KeyboardInterrupt`` silently).
    """

    def __init__(self, exit_code: int = 130, message: str = "interrupted") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message
