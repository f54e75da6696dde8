"""What every dataset kind produces: image paths with targets, and the ClassSet they index into."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from clipcompare.classes import ClassSet
from clipcompare.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


class Sample(NamedTuple):
    """One image: its path relative to the dataset root (POSIX form) and its index in the ClassSet."""

    path: str
    target: int


@dataclass(frozen=True)
class DatasetSpec:
    """A ``--dataset KIND=PATH[:MAPFILE]`` argument, parsed but not yet scanned."""

    kind: str
    root: Path
    option: str | None = None  # kind-specific extra (the folder kind's mapping file)
    name: str = ""

    @property
    def display(self) -> str:
        extra = f":{self.option}" if self.option else ""
        return f"{self.kind}={self.root}{extra}"


@dataclass(frozen=True)
class ImageDataset:
    """A scanned dataset: every image with its target, and the classes both models are scored on."""

    name: str
    kind: str
    root: Path
    classes: ClassSet
    samples: tuple[Sample, ...]
    notes: tuple[str, ...] = field(default=())
    # samples not stored as files under root (tar shards: a data.wds.ShardReader); None = files
    reader: Any = None
    # pixels cropped from every side after decoding (ObjectNet's 1-pixel frame)
    border: int = 0
    # the kind this dataset is a copy of (CLIP_benchmark's wds_imagenet-r is imagenet-r), for the
    # robustness map and the ImageNet-R/-A x-axis; None: its own kind
    stands_for: str | None = None
    # the kind's option that rebuilds it from (kind, root): the wds split, the folder kind's mapping file
    # (absolute); None for the kinds without one. run.json records it; resuming compares it
    option: str | None = None

    @property
    def benchmark(self) -> str:
        """The kind this dataset counts as: ``stands_for``, else ``kind``."""
        return self.stands_for or self.kind

    def __len__(self) -> int:
        return len(self.samples)

    def open_image(self, path: str) -> Any:
        """Sample ``path`` (as stored in the predictions) decoded as evaluate decodes it: its file under
        root or its bytes from the reader (tar shards), RGB, the border cropped; a PIL image."""
        from clipcompare.data.decode import decode_cropped, sample_source

        return decode_cropped(sample_source(self.root, path, self.reader), self.border)

    @property
    def classes_present(self) -> int:
        """How many classes have at least one image (a sample of ImageNet may cover only a few)."""
        return len({s.target for s in self.samples if s.target >= 0})  # -1: a sample with no label

    def rank_share(self, pending: Sequence[int], rank: int, world_size: int) -> list[int]:
        """The positions of ``pending`` a torchrun rank predicts: every ``world_size``-th image, or
        for tar shards whole shards (shard ``k`` to rank ``k % world_size``), so each rank reads its
        own shards front to back."""
        if world_size <= 1:
            return list(pending)
        if self.reader is None:
            return list(pending[rank::world_size])
        return [i for i in pending if self.reader.shard_number(self.samples[i].path) % world_size == rank]


def is_image_file(name: str) -> bool:
    """By extension, case-insensitive (``.JPEG`` as ImageNet ships it counts)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def check_root(root: Path, kind: str) -> None:
    """A missing or non-directory root is the user's to fix, before any model is loaded."""
    if not root.exists():
        raise UserError(f"dataset {kind}: {root} does not exist")
    if not root.is_dir():
        raise UserError(f"dataset {kind}: {root} is not a directory")


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop (ELOOP) or an unreadable link target is not a folder
        return False


def _within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or inside it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _unreadable(kind: str) -> Callable[[OSError], None]:
    def fail(err: OSError) -> None:
        raise UserError(f"dataset {kind}: cannot list {err.filename}: {err.strerror or err}")

    return fail


def class_folders(root: Path, kind: str) -> list[str]:
    """Sorted names of the class sub-folders of ``root`` (hidden folders ignored); error if none.

    A symlinked class folder is followed, unless it leads back to ``root`` or above (a loop).
    """
    check_root(root, kind)
    real_root = os.path.realpath(root)
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise UserError(f"dataset {kind}: cannot list {root}: {exc.strerror or exc}") from None
    names = []
    for e in entries:
        if e.name.startswith(".") or not _is_dir(e):
            continue
        if _within(real_root, os.path.realpath(e.path)):
            log.warning("dataset %s: ignoring %s, a link back to the dataset folder or above", kind, e.path)
            continue
        names.append(e.name)
    names.sort()
    if not names:
        raise UserError(
            f"dataset {kind}: no class folders under {root} "
            f"(expected one sub-folder of images per class)"
        )
    return names


def images_in(folder: Path, root: Path, limit: int | None = None, kind: str = "folder") -> list[str]:
    """Image files under ``folder`` (recursively), as sorted POSIX paths relative to ``root``.

    Symlinked folders are followed (datasets are often built from links), each real folder once:
    a link to a folder already read or to one above ``folder`` (a loop) is not entered. A folder
    that cannot be listed is a :class:`UserError`, not silently missing images.
    ``limit`` keeps the first N in sorted order, so ``--limit-per-class`` picks the same files on
    every run (which resuming relies on).
    """
    found: list[str] = []
    top = os.path.realpath(folder)
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_unreadable(kind), followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen or (real != top and _within(top, real)):
            dirnames[:] = []
            continue
        seen.add(real)
        # sorted: which of a link and its real folder is read (and so names the files) must not
        # depend on the order the filesystem lists them in
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        found.extend((rel / f).as_posix() for f in filenames if is_image_file(f) and not f.startswith("."))
    found.sort()
    return found[:limit] if limit is not None else found


def collect_samples(
    root: Path, kind: str, folder_targets: Sequence[tuple[str, int]], limit: int | None
) -> tuple[Sample, ...]:
    """Samples for ``(folder, target)`` pairs; a class folder without images is an error."""
    samples: list[Sample] = []
    empty: list[str] = []
    for folder, target in folder_targets:
        paths = images_in(root / folder, root, limit, kind)
        if not paths:
            empty.append(folder)
        samples.extend(Sample(p, target) for p in paths)
    if empty:
        raise UserError(
            f"dataset {kind}: class folder(s) with no images under {root}: {few(empty)} "
            f"(image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return tuple(samples)


def few(names: Iterable[str], n: int = 5) -> str:
    """The first ``n`` names quoted, for one-line error messages."""
    items = list(names)
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")

