"""A run directory's lock and provenance, shared by ``evaluate``, ``retrieval`` and ``train``.

One process at a time writes a run directory (:class:`RunLock`); :func:`now_iso` and
:func:`versions` are what run.json / retrieval.json record about when and with what it ran; the
constants below are the names and defaults that one command's run directory shares with another's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import weakref
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from clipcompare.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".clipcompare.lock"
# shared by evaluate's galleries, `explain --run` and the report, here so the CLI's defaults need no torch:
GALLERY_PER_CLASS = 2  # the report's "only X right" galleries: thumbnails per true class,
GALLERY_TOTAL = 16  # per gallery,
GALLERY_SEED = 0  # and the seed of their fixed random choice
EXPLAIN_DIR = "explain"  # `explain --run RUN_DIR` writes RUN_DIR/explain/<dataset>/,
EXPLAIN_RESULT = "explain.json"  # and every explain output folder holds explain.json


def now_iso() -> str:
    """UTC now as run.json stores it (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# distributions whose version a run records when installed: TorchCodec decodes --decode gpu, timm builds
# timm: models, transformers hf: models, grad-cam computes explain's maps
OPTIONAL_LIBRARIES: tuple[str, ...] = ("torchcodec", "timm", "transformers", "grad-cam")


def versions() -> dict[str, str]:
    """The library versions a run's numbers depend on, for run.json / retrieval.json."""
    import platform

    import numpy
    import open_clip
    import PIL
    import torch
    import torchvision

    from clipcompare import __version__

    found = {"clipcompare": __version__, "python": platform.python_version(), "torch": torch.__version__,
             "torchvision": torchvision.__version__, "open_clip": open_clip.__version__, "pillow": PIL.__version__,
             "numpy": numpy.__version__}
    # libraries that decode or build for some runs only: their installed version, read without importing them
    for dist in OPTIONAL_LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


class RunLock:
    """An exclusive lock on a run directory, held while one process writes it.

    The lock file ``RUN_DIR/.clipcompare.lock`` records the owner's pid, host and start time for
    the message a second process gets; whether the owner is alive is decided by an ``flock`` on
    that file, which the kernel drops when the owner dies however it dies (kill -9 included), so
    a stale lock is simply taken over and a pid reused by another process cannot keep it. The
    file is removed on release. ``what`` names the command in the refusal.

    An flock belongs to the open file, which a forked child (a DataLoader or multiprocessing
    worker) shares through its copy of the descriptor: orphaned workers of a killed owner would
    keep the lock until they noticed and exited. So every forked child closes its copies at once
    (:func:`_close_in_forked_child`), and exec'd children (torchrun, spawn) never get one (the
    descriptor is not inheritable): the lock dies with its owner. POSIX record locks
    (``lockf``), which children do not inherit, are no alternative: the owner would lose its lock
    whenever it closed any other descriptor of the file, and would not be refused by itself.
    """

    def __init__(self, root: Path, what: str = "clipcompare") -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise UserError (one line) naming the live owner."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root} exists and is not a directory")
        while True:
            try:  # a read-only file system, a full disk or no permission: the user's to fix
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UserError(f"--out {self.root}: cannot write there ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                raise UserError(f"{self.root} is in use by {self._owner_text()}; wait for it to finish "
                                "or use another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous owner removed the file between our open and flock: try again
        stale = os.read(fd, 4096)
        if stale.strip():
            log.warning("taking over the lock on %s left by %s, which is no longer running", self.root,
                        _owner_of(stale))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.what,
                "since": now_iso()}
        self._fd = fd
        _HELD.add(self)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as exc:  # a full disk: give the lock back (its file removed) before anything is written
            self.release()
            raise UserError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        return self

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking, so a waiter re-checks the inode
            os.close(self._fd)
            self._fd = None
            _HELD.discard(self)

    def _forget(self) -> None:
        """In a forked child: close this copy of the descriptor; the parent still holds the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None  # so the child's release() cannot remove the parent's lock file

    def _owner_text(self) -> str:
        try:
            return _owner_of(self.path.read_bytes())
        except OSError:
            return "another process"

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# the locks this process holds, for the fork hook below
_HELD: "weakref.WeakSet[RunLock]" = weakref.WeakSet()


def _close_in_forked_child() -> None:
    """Run in every child forked from Python (multiprocessing, DataLoader workers): drop the locks' fds."""
    for lock in list(_HELD):
        lock._forget()
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_forked_child)


def _owner_of(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        return f"{info.get('command', 'clipcompare')} (pid {info['pid']} on {info['host']}, since {info['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
