"""Helpers the tests share: generated images, nothing downloaded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def make_image(path: Path, size: tuple[int, int] = (96, 72), seed: int = 0) -> Path:
    """A smooth random colour image (JPEG or PNG by suffix)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
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
