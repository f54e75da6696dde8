"""Helpers the tests share: generated images, nothing downloaded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipcompare.data.synthetic import synthetic_image


def make_image(path: Path, size: tuple[int, int] = (96, 72), seed: int = 0) -> Path:
    """The package's generated image (JPEG or PNG by suffix)."""
    img = synthetic_image(np.random.default_rng(seed), size)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_image_folder(root: Path, classes: Sequence[str], per_class: int = 3,
                      size: tuple[int, int] = (96, 72), suffix: str = ".JPEG") -> Path:
    """``root/<class>/img_<k>.JPEG`` for each class."""
    seed = 0
    for c in classes:
        for k in range(per_class):
            make_image(root / c / f"img_{k}{suffix}", size=size, seed=seed)
            seed += 1
    return root
