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


def _input_paths(inputs: Mapping[str, Any]) -> Iterator[tuple[str, Path]]:
    """(name, path) of every input given: ``{name: path, list of paths, or None}``."""
    for name, value in inputs.items():
        for q in value if isinstance(value, (list, tuple)) else [value]:
            if q is not None:
                yield name, Path(q)


def _check_writable(folder: Path, role: str, shown: Path) -> None:
    """The nearest existing folder of ``folder`` is a folder and writable (nothing is made)."""
    existing = next(q for q in (folder, *folder.parents) if q.exists())  # "/" always exists
    if not existing.is_dir():
        raise FaketInputError(f"{role} folder {folder} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FaketInputError(f"{role} path {shown} is not writable: choose a writable location")


def refuse_input_overwrite(path: Path, role: str, inputs: Mapping[str, Any]) -> None:
    """Refuse an output (or its ``.json`` provenance) that is one of the command's inputs.

    inputs: ``{name: path, list of paths, or None}``.
    """
    for name, q in _input_paths(inputs):
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

    Writes nothing (the writer creates missing folders). Raises FaketInputError when
    the folder cannot be created or written, the path is a directory, the output (or
    its provenance ``.json``) is one of ``inputs`` (see :func:`refuse_input_overwrite`),
    or it exists and ``overwrite`` is False (the CLI's default: ``--overwrite`` replaces).
    """
    p = Path(path)
    refuse_input_overwrite(p, role, inputs or {})
    if p.is_dir():
        raise FaketInputError(f"{role} path {p} is a directory: give a file name")
    if not overwrite and p.exists():
        raise FaketInputError(f"{role} {p} exists: give --overwrite to replace it, or choose another path")
    _check_writable(p.parent, role, p)
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
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def check_output_dir(
    path: str | os.PathLike,
    *,
    role: str = "output folder",
    inputs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Make sure a folder of outputs can be made there, before any work; writes nothing.

    Refused: a file at that path; a folder that is, holds or lies inside one of ``inputs``;
    a folder with anything in it unless ``overwrite`` (it is then replaced whole); an
    unwritable location.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FaketInputError(f"{role} {p} is a file: give a folder path")
    for name, q in _input_paths(inputs or {}):
        a, b = p.resolve(), q.resolve()
        if a == b or a in b.parents or b in a.parents:
            raise FaketInputError(
                f"{role} {p} overlaps the {name} input {q}: faket never writes over its inputs; "
                f"choose another {role}"
            )
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise FaketInputError(
            f"{role} {p} is not empty: give --overwrite to replace it whole, or choose a new folder"
        )
    _check_writable(p.parent, role, p)  # the folder is written beside it and renamed
    return p


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole.

    On any exception the temporary folder is removed and ``path`` is untouched: a folder
    of outputs appears whole or not at all.
    """
    import shutil

    p = Path(path)
    tmp, old = _tmp_name(p), p.with_name(f".{p.name}.old-{os.getpid()}")
    for q in (tmp, old):
        if q.exists():
            shutil.rmtree(q)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        moved = p.exists()
        if moved:
            os.replace(p, old)
        try:
            os.replace(tmp, p)
        except BaseException:
            if moved:  # put the earlier folder back
                os.replace(old, p)
            raise
    finally:
        for q in (tmp, old):
            if q.exists():
                shutil.rmtree(q)
