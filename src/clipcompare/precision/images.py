"""The images drift is measured on: generated ones, or those read from a directory."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from clipcompare.data.base import IMAGE_EXTENSIONS, is_image_file
from clipcompare.data.decode import load_rgb
from clipcompare.data.synthetic import synthetic_image
from clipcompare.errors import UserError

log = logging.getLogger(__name__)


def generate_images(count: int, *, seed: int = 0, size: tuple[int, int] = (256, 256)):
    """Deterministic generated images (PIL), for drift when no --images are given."""
    rng = np.random.default_rng(seed)
    return [synthetic_image(rng, size) for _ in range(count)]


def load_images(directory: Path, limit: int) -> list:
    """Up to ``limit`` RGB images from ``directory`` (recursively, sorted by path)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--images: {directory} is not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and is_image_file(p.name))
    images = []
    for path in paths:
        if len(images) >= limit:
            break
        try:
            images.append(load_rgb(path))
        except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
            log.warning("skipping unreadable image %s: %s", path, exc)
    if not images:
        raise UserError(f"--images: no readable images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {directory}")
    return images
