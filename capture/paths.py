"""Output paths checked before any work starts.

A command that renders for minutes and then finds it cannot write its result
has wasted the user's time, and one that prints "wrote X" without having
written X lies. Every command that writes a file or a directory calls one of
these first: they create missing parent directories, prove the location is
writable by creating (and removing) a probe there, and raise
:class:`OutputPathError` (an ``avcore.errors.UsageError``, so a ``ValueError``) with a one-line message otherwise.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from avcore.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""Extensions an image output (contact sheet, PNG frames) may have."""


class OutputPathError(UsageError):
    """An output path that cannot be written; the message is one line and names the path."""


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _make_dir(path: Path, what: str) -> None:
    """Create ``path`` (and parents) or raise OutputPathError naming the part that failed."""
    if path.is_dir():
        return
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise OutputPathError(f"cannot write {what} {path}: {p} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create directory {path} for {what}: {_reason(exc)}") from None


def _probe_dir(path: Path, what: str) -> None:
    """Create and remove a file in ``path`` to prove it is writable."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".avcall-probe-", dir=path)
    except OSError as exc:
        raise OutputPathError(f"cannot write {what} in {path}: {_reason(exc)}") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike, *, what: str = "output file",
                      suffixes: Iterable[str] | None = None, append: bool = False) -> Path:
    """Make sure ``path`` can be written before any work starts; returns it as a Path.

    Missing parent directories are created. ``suffixes`` (e.g. :data:`IMAGE_SUFFIXES`)
    restricts the extension. An existing file must be a regular file we may open for
    writing (it is not truncated here); a new one is created and removed again, so
    nothing is left behind when the command later fails. With ``append`` an existing
    file is left exactly as it is.
    """
    path = Path(path)
    if suffixes is not None:
        allowed = tuple(s.lower() for s in suffixes)
        if path.suffix.lower() not in allowed:
            raise OutputPathError(
                f"cannot write {what} {path}: the extension must be one of {', '.join(allowed)}"
                f" (got {path.suffix or 'none'})")
    if str(path).endswith(os.sep) or path.is_dir():
        raise OutputPathError(f"cannot write {what} {path}: it is a directory, not a file")
    _make_dir(path.parent if str(path.parent) else Path("."), what)
    if path.exists():
        if not path.is_file():
            raise OutputPathError(f"cannot write {what} {path}: not a regular file")
        try:
            fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else 0))
        except OSError as exc:
            raise OutputPathError(f"cannot write {what} {path}: {_reason(exc)}") from None
        os.close(fd)
        return path
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise OutputPathError(f"cannot write {what} {path}: {_reason(exc)}") from None
    os.close(fd)
    os.unlink(path)
    return path


def check_output_dir(path: str | os.PathLike, *, what: str = "output directory") -> Path:
    """Create directory ``path`` (and parents) if needed and prove files can be written in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"cannot use {path} as {what}: it exists and is not a directory")
    _make_dir(path, what)
    _probe_dir(path, what)
    return path
