"""The images drift is measured on: generated ones, or those read from a directory."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from clipcompare.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def generate_images(count: int, *, seed: int = 0, size: tuple[int, int] = (256, 256)):
    """Deterministic smooth random colour images (PIL), for drift when no --images are given."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        base = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(base).resize(size, Image.BILINEAR), dtype=np.float32)
        # a little high-frequency texture so convolutions see edges, not only gradients
        noisy = smooth + rng.normal(0.0, 12.0, size=smooth.shape)
        images.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return images


def load_images(directory: Path, limit: int) -> list:
    """Up to ``limit`` RGB images from ``directory`` (recursively, sorted by path)."""
    from PIL import Image, UnidentifiedImageError

    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--images: {directory} is not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for path in paths:
        if len(images) >= limit:
            break
        try:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            log.warning("skipping unreadable image %s: %s", path, exc)
    if not images:
        raise UserError(f"--images: no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {directory}")
    return images
