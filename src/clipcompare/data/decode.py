"""Decode each image once and apply every model's preprocessing, safe to run in DataLoader workers.

A file that cannot be decoded (truncated JPEG, empty file, text named ``.jpg``, no permission,
more pixels than Pillow's decompression-bomb limit) yields an error string instead of tensors:
raising inside a worker would end the whole run.

Images become RGB the way torchvision's and open_clip's own loaders make them (PIL's
``convert("RGB")``), so published numbers stay reproducible: CMYK and palette images are converted
by PIL, an alpha channel is dropped (the colour stored under transparent pixels is kept, not
composited on a background) and EXIF orientation is *not* applied (the stored pixels are used, as
those loaders do). The one exception is 16-bit greyscale, which PIL's convert clips at 255 (a
16-bit PNG comes out nearly white): it is scaled to 8 bits instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch
from PIL import Image

# load_rgb enforces Pillow's pixel limit itself (and reports it per image); Pillow's own warning
# for the same images would only repeat that on stderr
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

Transform = Callable[[Image.Image], torch.Tensor]
Item = tuple[int, "tuple[torch.Tensor, ...] | None", "str | None"]


def load_rgb(path: "Path | BinaryIO") -> Image.Image:
    """Fully decoded RGB image; raises on any unreadable, truncated or oversized file.

    Pillow refuses images over twice ``Image.MAX_IMAGE_PIXELS`` and only warns above it; here the
    limit itself applies, checked from the header before any pixel is decoded.
    """
    with Image.open(path) as img:
        limit = Image.MAX_IMAGE_PIXELS
        if limit and img.width * img.height > limit:
            raise Image.DecompressionBombError(
                f"{img.width}x{img.height} = {img.width * img.height} pixels exceeds Pillow's limit of {limit} "
                "(PIL.Image.MAX_IMAGE_PIXELS)"
            )
        # converting forces the full decode inside the with-block, so truncation raises here
        return to_rgb(img)


_WIDE_GREY = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def to_rgb(img: Image.Image) -> Image.Image:
    """``img.convert("RGB")``, except that 16-bit greyscale is scaled to 8 bits instead of clipped."""
    if img.mode in _WIDE_GREY:
        values = np.asarray(img, dtype=np.float64)
        if img.mode != "I" or values.max(initial=0) > 255:  # mode I holding 8-bit values needs no scaling
            values = values / 257.0  # 65535 -> 255, and x*257 (8-bit data stored as 16) -> x exactly
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGB")


class SampleReader(Protocol):
    """Where a dataset's images are when they are not files under its root (``data.wds``'s tar shards)."""

    def open(self, path: str) -> BinaryIO:
        """The encoded image of sample ``path``; raises (and so skips the sample) when it cannot be read."""
        ...


def sample_source(root: Path, path: str, reader: SampleReader | None) -> "Path | BinaryIO":
    """What PIL opens for sample ``path``: its file under ``root``, or its bytes from ``reader`` (tar shards)."""
    return root / path if reader is None else reader.open(path)


def decode_cropped(path: "Path | BinaryIO", border: int = 0) -> Image.Image:
    """One image as every model of a run sees it before its transform: RGB, ``border`` pixels cropped
    from every side (ObjectNet's frame)."""
    img = load_rgb(path)
    if border:
        from PIL import ImageOps

        img = ImageOps.crop(img, border)
    return img


def decode_and_transform(path: "Path | BinaryIO", transforms: Sequence[Transform],
                         border: int = 0) -> tuple[torch.Tensor, ...]:
    """What ``--decode cpu`` produces for one image: one PIL decode, ``border`` pixels cropped from
    every side (ObjectNet's frame), every model's transform."""
    img = decode_cropped(path, border)
    return tuple(t(img) for t in transforms)


class DecodedImages(torch.utils.data.Dataset):
    """Item ``i`` is ``(i, (tensor per transform), None)`` or ``(i, None, reason)``.

    Images are files under ``root``, or samples a ``reader`` opens (tar shards); ``border`` pixels
    are cropped from every side after decoding.
    """

    def __init__(self, root: Path, paths: Sequence[str], transforms: Sequence[Transform],
                 reader: SampleReader | None = None, border: int = 0) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.transforms = tuple(transforms)
        self.reader = reader
        self.border = border

    def __len__(self) -> int:
        return len(self.paths)

    def source(self, i: int) -> "Path | BinaryIO":
        """What PIL opens for item ``i``: its file, or its bytes from the reader."""
        return sample_source(self.root, self.paths[i], self.reader)

    def __getitem__(self, i: int) -> Item:
        try:
            return i, decode_and_transform(self.source(i), self.transforms, self.border), None
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


class ThreadedDecode:
    """``DecodedImages`` in batches of ``batch_size``, in order, collated: iterate it. Each batch's
    images are decoded and transformed by ``threads`` threads at once (PIL's decode and resize
    release the GIL), between the caller's forward passes, not during them.

    Why not overlap: on CPU the forward already keeps every core busy with its intra-op threads; a
    decode thread running beside it (the previous design) preempts one of them, and the others wait
    at the pool's barriers. Decoding in a burst on all cores costs the forward only the CPU time of
    the decode (on a 2-core AMD EPYC, evaluate / bare forward went from 0.941 to 0.975; see
    ``benchmarks/evaluate_speed.py``). Only for transforms that run no torch ops per image (a
    ``SplitPreprocess``): torch ops in other threads would start more intra-op thread pools.
    """

    def __init__(self, images: DecodedImages, batch_size: int, threads: int = 1) -> None:
        self.images = images
        self.batch_size = max(1, batch_size)
        self.threads = max(1, threads)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        from concurrent.futures import ThreadPoolExecutor

        if not len(self.images):
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix="clipcompare-decode") as pool:
            for start in range(0, len(self.images), self.batch_size):
                items = pool.map(self.images.__getitem__, range(start, min(start + self.batch_size, len(self.images))))
                yield collate(list(items))  # here, not in a thread: torch.stack is a torch op


def batch_loader(images: DecodedImages, batch_size: int, *, workers: int = 0,
                 device: torch.device = torch.device("cpu"),
                 collate_fn: Callable[[Sequence[Any]], Any] = collate) -> Iterable[Any]:
    """``images`` in collated batches, in order.

    On CPU with no workers and every transform a ``SplitPreprocess``, :class:`ThreadedDecode` on
    as many threads as torch uses (DataLoader workers were slower on the 2-core machine: they
    compete with the forward for the same cores, and every batch crosses a process boundary);
    otherwise a DataLoader with ``workers`` processes, pinning memory for CUDA.
    """
    from clipcompare.data.tensor_preprocess import SplitPreprocess

    if (collate_fn is collate and workers <= 0 and device.type == "cpu"
            and all(isinstance(t, SplitPreprocess) for t in images.transforms)):
        return ThreadedDecode(images, batch_size, torch.get_num_threads())
    workers = max(0, workers)
    return torch.utils.data.DataLoader(
        images, batch_size=max(1, batch_size), shuffle=False, num_workers=workers, collate_fn=collate_fn,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None, persistent_workers=False,
    )
