"""Generated images for the demo and benchmarks: no dataset ships with the package."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_image(rng: np.random.Generator, size: tuple[int, int] = (500, 375), noise: float = 12.0) -> Image.Image:
    """Smooth colour shapes plus sensor-like noise: JPEG entropy close to a photo's."""
    w, h = size
    base = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(base, dtype=np.float32) + rng.normal(0, noise, (h, w, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def make_image_folder(
    root: Path, class_dirs: Sequence[str], per_class: int, *, size: tuple[int, int] = (500, 375), seed: int = 0
) -> Path:
    """``root/<class_dir>/<k>.JPEG`` (quality 90), deterministic for a seed; existing files are kept."""
    rng = np.random.default_rng(seed)
    for d in class_dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img = synthetic_image(rng, size)  # drawn even when the file exists, so content never depends on it
            path = root / d / f"{k:03d}.JPEG"
            if not path.exists():
                img.save(path, quality=90)
    return root
