"""Decode each image once and apply every model's preprocessing, safe to run in DataLoader workers.

A file that cannot be decoded (truncated JPEG, empty file, text named ``.jpg``) yields an error
string instead of tensors: raising inside a worker would end the whole run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

Transform = Callable[[Image.Image], torch.Tensor]
Item = tuple[int, "tuple[torch.Tensor, ...] | None", "str | None"]


def load_rgb(path: Path) -> Image.Image:
    """Fully decoded RGB image; raises on any unreadable or truncated file."""
    with Image.open(path) as img:
        # convert() forces the full decode inside the with-block, so truncation raises here
        return img.convert("RGB")


class DecodedImages(torch.utils.data.Dataset):
    """Item ``i`` is ``(i, (tensor per transform), None)`` or ``(i, None, reason)``."""

    def __init__(self, root: Path, paths: Sequence[str], transforms: Sequence[Transform]) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.transforms = tuple(transforms)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        try:
            img = load_rgb(self.root / self.paths[i])
            return i, tuple(t(img) for t in self.transforms), None
        except Exception as exc:  # noqa: BLE001 - any failure on one image must not stop the run
            return i, None, f"{type(exc).__name__}: {exc}"


class Batch:
    """Collated items: positions of the good images, one stacked tensor per transform, and failures."""

    __slots__ = ("positions", "tensors", "failures")

    def __init__(
        self, positions: torch.Tensor, tensors: tuple[torch.Tensor, ...], failures: list[tuple[int, str]]
    ) -> None:
        self.positions = positions
        self.tensors = tensors
        self.failures = failures

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pinning thread when ``pin_memory=True``."""
        return Batch(self.positions, tuple(t.pin_memory() for t in self.tensors), self.failures)


def collate(items: Sequence[Item]) -> Batch:
    """Stack the decoded images (in the worker), set the failed ones aside."""
    good = [it for it in items if it[1] is not None]
    failures = [(it[0], it[2] or "unknown error") for it in items if it[1] is None]
    positions = torch.tensor([it[0] for it in good], dtype=torch.long)
    n = len(good[0][1]) if good else 0
    tensors = tuple(torch.stack([it[1][k] for it in good]) for k in range(n))  # type: ignore[index]
    return Batch(positions, tensors, failures)
