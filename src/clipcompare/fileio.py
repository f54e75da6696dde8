"""Atomic file writes: a reader, or a run resumed after kill -9, never sees half a file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a hidden temp path beside ``path``; once the block has written it, rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    yield tmp
    os.replace(tmp, path)  # atomic on POSIX within one directory


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
