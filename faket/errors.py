"""Errors that the CLI turns into one clear line and exit code 2."""

from __future__ import annotations


class FaketInputError(ValueError):
    """Bad user input: a missing or broken file, a wrong shape, an impossible setting.

    The message is one line that names what is wrong, which file, and what to do.
    """
