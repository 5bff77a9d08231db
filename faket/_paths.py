"""Output paths: checked before any work, never an input, written under a temporary name."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import FaketInputError


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same resolved path, or the same inode (a hard link)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def refuse_input_overwrite(path: Path, role: str, inputs: Mapping[str, Any]) -> None:
    """Refuse an output (or its ``.json`` provenance) that is one of the command's inputs.

    inputs: ``{name: path, list of paths, or None}``.
    """
    for name, value in inputs.items():
        for q in value if isinstance(value, (list, tuple)) else [value]:
            if q is None:
                continue
            for target in (path, Path(f"{path}.json")):
                if _same_file(target, Path(q)):
                    raise FaketInputError(
                        f"{role} {target} is the {name} input {q}: faket never writes over its "
                        f"inputs; choose another {role} path"
                    )


def check_output_path(
    path: str | os.PathLike,
    *,
    role: str = "output",
    inputs: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Make sure an output file can be written there, before any work starts.

    Creates missing parent folders. Raises FaketInputError when the folder
    cannot be created or written, the path is a directory, the output (or
    its provenance ``.json``) is one of ``inputs`` (see :func:`refuse_input_overwrite`),
    or it exists and ``overwrite`` is False (the CLI's default: ``--overwrite`` replaces).
    """
    p = Path(path)
    refuse_input_overwrite(p, role, inputs or {})
    if p.is_dir():
        raise FaketInputError(f"{role} path {p} is a directory: give a file name")
    if not overwrite and p.exists():
        raise FaketInputError(f"{role} {p} exists: give --overwrite to replace it, or choose another path")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FaketInputError(
            f"{role} folder {p.parent} cannot be created ({err.strerror}): choose a writable location"
        ) from None
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise FaketInputError(f"{role} path {p} is not writable: choose a writable location")
    if p.exists() and not os.access(p, os.W_OK):
        raise FaketInputError(f"{role} file {p} exists and is read-only: choose another path")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    p = Path(path)
    tmp = _tmp_name(p)
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")
