"""Atomic file writes: a reader, or a run resumed after kill -9, never sees half a file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from clipcompare.errors import UserError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a hidden temp path beside ``path``; once the block has written it, rename it into place.

    When the block or the rename fails the temp file is removed, and an OSError (disk full, quota,
    read-only file system) becomes a one-line UserError naming ``path``: the files written before
    stay whole, so the same command resumes once there is room.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)  # atomic on POSIX within one directory
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save(obj, path)`` atomically; a write that fails is a one-line UserError naming ``path``.

    torch's zip writer reports a failed ``write()`` (disk full, quota) as a RuntimeError such as
    ``unexpected pos 704 vs 598``, not as an OSError, so it is turned into one here."""
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            raise OSError(f"torch.save could not write the file (is the disk full?): {exc}") from None


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` (a JSON-lines log); an OSError is a one-line UserError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def make_dirs(path: Path) -> Path:
    """``path.mkdir(parents=True, exist_ok=True)``; an OSError (a file in the way, read-only, no room) is a
    one-line UserError naming ``path``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder {path}: {exc.strerror or exc}") from None
    return path
