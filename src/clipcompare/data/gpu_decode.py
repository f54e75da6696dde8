"""``--decode gpu``: workers read file bytes, the device decodes JPEGs in batches and preprocesses them.

The DataLoader workers only read each file and look at its header (no pixel decoding). A plain
RGB or greyscale JPEG is handed on as bytes; everything else takes the CPU path in the worker
(``load_rgb`` + the models' PIL transforms), so the result is the same as ``--decode cpu`` for
it: PNGs and other formats, CMYK JPEGs (PIL's CMYK→RGB is not libjpeg's), JPEGs with an EXIF
orientation (``load_rgb`` owns that decision), and files that do not end in a JPEG end-of-image
marker (truncated: the CPU path reports them as a skip, where nvJPEG might return a grey tail).
In the main process :class:`DeviceDecoder` decodes the batch's JPEGs with one
``torchcodec.decoders.decode_jpeg(list, device=...)`` call (nvJPEG's batched decoder on CUDA,
libjpeg-turbo on CPU; torchvision's ``decode_jpeg`` is deprecated since 0.29, see
docs/decoding.md), runs each model's
:class:`~clipcompare.data.tensor_preprocess.TensorPreprocess` once per distinct transform, and
sends any JPEG the decoder rejects through the CPU path too. Fallbacks are counted by reason.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clipcompare.data.decode import Batch, DecodedImages, Transform, decode_and_transform, sample_source
from clipcompare.data.tensor_preprocess import TensorPreprocess
from clipcompare.errors import UserError

log = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112

# One item: (position, encoded JPEG bytes | None, CPU-path tensors | None, fallback reason | None, error | None)
RawItem = tuple[int, "torch.Tensor | None", "tuple[torch.Tensor, ...] | None", "str | None", "str | None"]


def jpeg_decoder() -> Callable[..., Any]:
    """TorchCodec's ``decode_jpeg``, looked up when called (so tests can stand in for it).

    TorchCodec's wheels carry native libraries built for one torch and CUDA: a mismatched install
    fails here, as one line naming the way out instead of a traceback from the loader.
    """
    try:
        from torchcodec import decoders
    except (ImportError, OSError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--decode gpu decodes with TorchCodec, which did not load ({reason}); install the "
                        "torchcodec build that matches your torch (docs/decoding.md) or use --decode cpu") from None
    return decoders.decode_jpeg


def jpeg_route(data: bytes) -> str | None:
    """None when the device decoder may take ``data``; otherwise why it goes the CPU path."""
    if not data.startswith(b"\xff\xd8"):
        return "not a JPEG"
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "no JPEG end marker (truncated?)"
    try:
        with Image.open(io.BytesIO(data)) as img:  # header only: no pixels are decoded here
            if img.format != "JPEG":
                return "not a JPEG"
            if img.mode not in ("RGB", "L"):
                return f"JPEG in mode {img.mode}"
            if img.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
                return "EXIF orientation"
    except Exception:  # noqa: BLE001 - an unreadable header: the CPU path reports it
        return "unreadable header"
    return None


class EncodedImages(DecodedImages):
    """Item ``i``: the file's bytes for the device decoder, or the CPU path's tensors, or an error."""

    def __getitem__(self, i: int) -> RawItem:
        try:
            source = self.source(i)
            data = source.read_bytes() if isinstance(source, Path) else source.read()
            reason = jpeg_route(data)
            if reason is None:
                return i, torch.frombuffer(bytearray(data), dtype=torch.uint8), None, None, None
            return i, None, decode_and_transform(io.BytesIO(data), self.transforms), reason, None
        except Exception as exc:  # noqa: BLE001 - any failure on one image must not stop the run
            return i, None, None, None, f"{type(exc).__name__}: {exc}"


class RawBatch:
    """Collated :class:`EncodedImages` items, in order: JPEG bytes, CPU-path tensors, failures."""

    __slots__ = ("positions", "encoded", "encoded_slots", "fallback", "fallback_slots", "fallback_reasons",
                 "failures")

    def __init__(self, items: Sequence[RawItem]) -> None:
        good = [it for it in items if it[4] is None]
        self.positions = torch.tensor([it[0] for it in good], dtype=torch.long)
        self.encoded = [it[1] for it in good if it[1] is not None]
        self.encoded_slots = [k for k, it in enumerate(good) if it[1] is not None]
        cpu = [it for it in good if it[2] is not None]
        n = len(cpu[0][2]) if cpu else 0
        self.fallback = tuple(torch.stack([it[2][k] for it in cpu]) for k in range(n))  # type: ignore[index]
        self.fallback_slots = [k for k, it in enumerate(good) if it[2] is not None]
        self.fallback_reasons = [it[3] or "" for it in cpu]
        self.failures = [(it[0], it[4] or "unknown error") for it in items if it[4] is not None]

    def pin_memory(self) -> "RawBatch":
        """Called by the DataLoader's pinning thread: the CPU-path tensors go to the device async."""
        self.fallback = tuple(t.pin_memory() for t in self.fallback)
        return self


def collate_raw(items: Sequence[RawItem]) -> RawBatch:
    return RawBatch(items)


class DeviceDecoder:
    """Turns a :class:`RawBatch` into a :class:`Batch` of preprocessed tensors on ``device``."""

    def __init__(self, root: Path, paths: Sequence[str], transforms: Sequence[Transform],
                 preprocesses: Sequence[TensorPreprocess], device: torch.device, reader: Any = None) -> None:
        self.root, self.paths = Path(root), list(paths)
        self.reader = reader  # a data.decode.SampleReader when the images are in tar shards
        self.transforms, self.preprocesses, self.device = tuple(transforms), tuple(preprocesses), device
        self.fallbacks: Counter[str] = Counter()  # reason -> images that took the CPU path
        self.decoded = 0  # images decoded on the device
        self.decode_jpeg = jpeg_decoder()  # a missing or mismatched TorchCodec stops here, before any batch

    def __call__(self, raw: RawBatch) -> Batch:
        n = len(raw.positions)
        failures = list(raw.failures)
        images, slots = self._decode(raw, failures)
        fallback = [t.to(self.device, non_blocking=True) for t in raw.fallback]
        fallback_slots = list(raw.fallback_slots)
        self.fallbacks.update(raw.fallback_reasons)
        decoded = set(slots)
        rejected = [s for s in raw.encoded_slots if s not in decoded]
        if rejected:  # JPEGs the device decoder refused: the CPU path, here
            extra, ok = self._cpu_path(raw, rejected, failures)
            if ok:
                fallback = [torch.cat([f, e]) for f, e in zip(fallback, extra)] if fallback else extra
                fallback_slots += ok
        keep = sorted(slots + fallback_slots)
        if not keep:
            return Batch(raw.positions[:0], (), sorted(failures))
        order = (slots if images else []) + fallback_slots  # the rows as concatenated below
        where = {s: row for row, s in enumerate(order)}
        reorder = None if order == keep else torch.as_tensor([where[s] for s in keep], device=self.device)
        tensors = []
        for k, pre in enumerate(self.preprocesses):
            parts = ([pre(images)] if images else []) + ([fallback[k]] if fallback_slots else [])
            x = torch.cat(parts) if len(parts) > 1 else parts[0]
            tensors.append(x if reorder is None else x[reorder])
        positions = raw.positions[torch.as_tensor(keep, dtype=torch.long)] if len(keep) != n else raw.positions
        self.decoded += len(slots)
        return Batch(positions, tuple(tensors), sorted(failures))

    def _decode(self, raw: RawBatch, failures: list) -> tuple[list[torch.Tensor], list[int]]:
        """Decode the batch's JPEGs together; when that raises, one by one to find the rejected ones."""
        if not raw.encoded:
            return [], []
        try:
            return list(self._decode_jpeg(raw.encoded)), list(raw.encoded_slots)
        except RuntimeError as exc:
            log.debug("batched JPEG decode failed (%s); decoding one by one", exc)
        images, slots = [], []
        for data, slot in zip(raw.encoded, raw.encoded_slots):
            try:
                images.append(self._decode_jpeg(data))
                slots.append(slot)
            except RuntimeError:
                pass
        return images, slots

    def _decode_jpeg(self, data: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if self.device.type == "cuda":
            # nvJPEG's hardware engine does not wait for work already queued on the stream it is given
            # (pytorch/vision#9606, meta-pytorch/torchcodec#1634): it could write its outputs into a block
            # the caching allocator recycled while queued kernels (the last batch's resize) still read
            # it. Draining the stream first closes that; it costs no wall time, as the decoder
            # host-synchronizes this same stream before it returns anyway.
            torch.cuda.current_stream(self.device).synchronize()
        return self.decode_jpeg(data, mode="RGB", device=self.device)

    def _cpu_path(self, raw: RawBatch, slots: list[int], failures: list) -> tuple[list[torch.Tensor], list[int]]:
        outs: list[tuple[torch.Tensor, ...]] = []
        ok: list[int] = []
        for slot in slots:
            pos = int(raw.positions[slot])
            try:
                outs.append(decode_and_transform(sample_source(self.root, self.paths[pos], self.reader),
                                                 self.transforms))
                ok.append(slot)
                self.fallbacks["rejected by the device decoder"] += 1
            except Exception as exc:  # noqa: BLE001 - reported as a skip, like the CPU path
                failures.append((pos, f"{type(exc).__name__}: {exc}"))
        if not outs:
            return [], []
        return [torch.stack([o[k] for o in outs]).to(self.device) for k in range(len(self.transforms))], ok
