"""What every dataset kind produces: image paths with targets, and the ClassSet they index into."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from clipcompare.errors import UserError
from clipcompare.models.classifier import ClassSet

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

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def classes_present(self) -> int:
        """How many classes have at least one image (a sample of ImageNet may cover only a few)."""
        return len({s.target for s in self.samples})


def is_image_file(name: str) -> bool:
    """By extension, case-insensitive (``.JPEG`` as ImageNet ships it counts)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def check_root(root: Path, kind: str) -> None:
    """A missing or non-directory root is the user's to fix, before any model is loaded."""
    if not root.exists():
        raise UserError(f"dataset {kind}: {root} does not exist")
    if not root.is_dir():
        raise UserError(f"dataset {kind}: {root} is not a directory")


def class_folders(root: Path, kind: str) -> list[str]:
    """Sorted names of the class sub-folders of ``root`` (hidden folders ignored); error if none."""
    check_root(root, kind)
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise UserError(
            f"dataset {kind}: no class folders under {root} "
            f"(expected one sub-folder of images per class)"
        )
    return names


def images_in(folder: Path, root: Path, limit: int | None = None) -> list[str]:
    """Image files under ``folder`` (recursively), as sorted POSIX paths relative to ``root``.

    ``limit`` keeps the first N in sorted order, so ``--limit-per-class`` picks the same files on
    every run (which resuming relies on).
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
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
        paths = images_in(root / folder, root, limit)
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

