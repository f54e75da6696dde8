"""Pixels for training and validation: uint8 [3, S, S] per image, decoded per batch or read from a
memory-mapped cache (``--cache-images``).

The reference setup has no augmentation, so an image's resized pixels never change: the cache
holds exactly what decoding would give, and epochs after it is filled decode nothing.
Normalisation happens later, as a tensor op on the training device. Images that cannot be decoded
are skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from clipcompare.data.decode import DecodedImages, collate
from clipcompare.fileio import atomic_path
from clipcompare.models.contrastive import ResizeToUint8

log = logging.getLogger(__name__)


class PixelSource:
    """The images of one split (``root`` + relative ``paths``) as uint8 batches."""

    def __init__(self, name: str, root: Path, paths: Sequence[str], size: int, *, workers: int = 0,
                 cache_dir: Path | None = None, build_cache: bool = True) -> None:
        self.name, self.root, self.paths, self.size, self.workers = name, Path(root), list(paths), size, workers
        self.failed: dict[int, str] = {}
        self._pixels: np.ndarray | None = None
        self._valid: np.ndarray | None = None
        if cache_dir is not None:
            self._open_cache(Path(cache_dir), build_cache)

    def __len__(self) -> int:
        return len(self.paths)

    def _dataset(self) -> DecodedImages:
        return DecodedImages(self.root, self.paths, [ResizeToUint8(self.size)])

    def cache_files(self, cache_dir: Path) -> tuple[Path, Path]:
        key = hashlib.sha256(json.dumps([str(self.root.resolve()), self.paths, self.size]).encode()).hexdigest()[:16]
        base = cache_dir / f"images-{self.name}-{self.size}px-{key}"
        return base.with_suffix(".u8"), base.with_suffix(".valid.npy")

    def _open_cache(self, cache_dir: Path, build: bool) -> None:
        pixels_file, valid_file = self.cache_files(cache_dir)
        shape = (len(self.paths), 3, self.size, self.size)
        if not valid_file.is_file():  # the validity mask is written last: without it the cache is incomplete
            if not build:
                raise RuntimeError(f"image cache {pixels_file} is not complete")
            self._fill_cache(pixels_file, valid_file, shape)
        self._valid = np.load(valid_file)
        self._pixels = np.memmap(pixels_file, dtype=np.uint8, mode="r", shape=shape)
        self.failed = {int(i): "could not be decoded when the cache was filled" for i in np.flatnonzero(~self._valid)}

    def _fill_cache(self, pixels_file: Path, valid_file: Path, shape: tuple[int, ...]) -> None:
        pixels_file.parent.mkdir(parents=True, exist_ok=True)
        log.warning("caching %d %s images at %dx%d in %s (%.1f GB)", shape[0], self.name, self.size, self.size,
                    pixels_file, np.prod(shape) / 1e9)
        out = np.memmap(pixels_file, dtype=np.uint8, mode="w+", shape=shape)
        valid = np.zeros(shape[0], dtype=bool)
        order = list(range(shape[0]))
        for positions, pixels in self._decode([order[i:i + 64] for i in range(0, len(order), 64)]):
            out[positions.numpy()] = pixels.numpy()
            valid[positions.numpy()] = True
        out.flush()
        del out
        with atomic_path(valid_file) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, valid)

    def _decode(self, batches: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(self._dataset(), batch_sampler=batches, collate_fn=collate,
                                             num_workers=self.workers)
        for batch in loader:
            for index, reason in batch.failures:
                if index not in self.failed:
                    log.warning("skipping %s: %s", self.root / self.paths[index], reason)
                self.failed[index] = reason
            if len(batch.positions):
                yield batch.positions, batch.tensors[0]
            else:  # every image of the batch failed: still one (empty) batch, so callers stay in step
                yield batch.positions, torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)

    def valid_indices(self) -> list[int] | None:
        """The decodable images when known up front (from the cache), else None."""
        return None if self._valid is None else [int(i) for i in np.flatnonzero(self._valid)]

    def batches(self, batches: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(positions of the images that loaded, uint8 pixels [B, 3, S, S]) per requested batch, in order.

        A batch whose images all failed is yielded empty, so callers stay in step with ``batches``.
        """
        if self._pixels is None:
            yield from self._decode(batches)
            return
        assert self._valid is not None
        for request in batches:
            idx = np.array([i for i in request if self._valid[i]], dtype=np.int64)
            yield torch.from_numpy(idx), torch.from_numpy(np.ascontiguousarray(self._pixels[idx]))
