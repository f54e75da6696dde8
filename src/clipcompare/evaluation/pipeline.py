"""The input pipeline: decode each image once, apply every model's preprocessing, hand the batch
to the device.

``--decode cpu`` (the reference) decodes with PIL; ``--decode gpu`` reads the files in the workers
and decodes JPEGs on the device (:mod:`clipcompare.data.gpu_decode`). On CUDA the next batch's
copies overlap the current forward (:func:`prefetch`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clipcompare.data import ImageDataset
from clipcompare.data.decode import Batch, DecodedImages, batch_loader
from clipcompare.errors import UserError
from clipcompare.evaluation.options import EvaluateOptions
from clipcompare.models.classifier import Classifier


def make_loader(
    ds: ImageDataset, pending: np.ndarray, transforms: Sequence[Any], options: EvaluateOptions, device: torch.device
) -> Iterable[Any]:
    """Decode + preprocess in ``options.workers`` processes (in this process when 0), in dataset order
    (:func:`decode.batch_loader`: on CPU with no workers, threads between forwards).

    With ``options.decode == "gpu"`` the workers only read the files (``gpu_decode.EncodedImages``).
    """
    paths = [ds.samples[i].path for i in pending]
    if options.decode == "gpu":
        from clipcompare.data.gpu_decode import EncodedImages, collate_raw

        return batch_loader(EncodedImages(ds.root, paths, transforms, ds.reader), options.batch_size,
                            workers=options.workers, device=device, collate_fn=collate_raw)
    return batch_loader(DecodedImages(ds.root, paths, transforms, ds.reader, ds.border), options.batch_size,
                        workers=options.workers, device=device)


def prefetch(batches: Iterable[Any], prepare: Callable[[Any], Batch], device: torch.device) -> Iterator[Batch]:
    """``prepare(batch)`` for each batch; on CUDA the next batch's copies (and GPU decoding) are issued
    on a side stream before the current batch is handed over, so they overlap its forward passes."""
    if device.type != "cuda":
        for b in batches:
            yield prepare(b)
        return
    stream = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)
    it = iter(batches)

    def load() -> Batch | None:
        raw = next(it, None)
        if raw is None:
            return None
        with torch.cuda.stream(stream):
            return prepare(raw)

    nxt = load()
    while nxt is not None:
        main.wait_stream(stream)
        for t in nxt.tensors:  # allocated on the side stream, used on the main one
            t.record_stream(main)
        cur, nxt = nxt, load()
        yield cur


def _to_device(
    device: torch.device, splits: Sequence[Any] = (), layouts: Sequence[torch.memory_format] = ()
) -> Callable[[Batch], Batch]:
    """The hand-over of a collated batch: to ``device``, and for each slot with a
    ``SplitPreprocess`` (``splits[k]``, else None) its batched ``/255`` + normalise, laid out as
    ``layouts[k]`` (the memory format of the model it feeds, so no copy follows)."""
    def move(batch: Batch) -> Batch:
        tensors = []
        for k, t in enumerate(batch.tensors):
            t = t.to(device, non_blocking=True)
            if k < len(splits) and splits[k] is not None:
                t = splits[k].finish(t, layouts[k] if k < len(layouts) else torch.contiguous_format)
            tensors.append(t)
        return Batch(batch.positions, tuple(tensors), batch.failures)

    return move


@dataclass
class InputPipeline:
    """The batches of ``pending`` on the device, preprocessed for every model: iterate it.

    ``slot[m]`` is the index in ``Batch.tensors`` of model ``m``'s input (models sharing a
    transform share a tensor); ``decoder`` counts the decode paths with ``--decode gpu``.
    """

    loader: Iterable[Any]
    prepare: Callable[[Any], Batch]
    device: torch.device
    slot: list[int]
    decoder: Any = None

    def __iter__(self) -> Iterator[Batch]:
        return prefetch(self.loader, self.prepare, self.device)

    def decode_counts(self) -> dict[str, Any]:
        if self.decoder is None:
            return {}
        return {"device": self.decoder.decoded, "cpu_path": dict(self.decoder.fallbacks)}


def input_pipeline(
    ds: ImageDataset, pending: np.ndarray, classifiers: Sequence[Classifier], options: EvaluateOptions,
    device: torch.device, formats: Sequence[torch.memory_format] | None = None,
) -> InputPipeline:
    """Loader + hand-over to the device for ``options.decode`` (one decode per image for all models).

    With ``--decode cpu`` each transform that :func:`split_preprocess` can split runs its PIL part
    per image (to uint8) and its ``/255`` + normalise once per batch on the device, bitwise equal
    to the whole transform per image; the others run whole, per image. ``formats``: each
    model's memory format, in which its batch is then laid out.
    """
    transforms, slot = distinct_transforms(classifiers)
    if options.decode != "gpu":
        from clipcompare.data.tensor_preprocess import split_preprocess

        splits = [split_preprocess(t) for t in transforms]
        per_image = [t if sp is None else sp for t, sp in zip(transforms, splits)]
        layouts = [torch.contiguous_format] * len(transforms)
        for s, fmt in reversed(list(zip(slot, formats or []))):  # a shared slot: its first model's format
            layouts[s] = fmt
        loader = make_loader(ds, pending, per_image, options, device)
        return InputPipeline(loader, _to_device(device, splits, layouts), device, slot)
    if ds.border:
        raise UserError(f"--decode gpu does not crop the {ds.border}-pixel border of dataset {ds.name}'s images; "
                        "use --decode cpu")
    loader = make_loader(ds, pending, transforms, options, device)
    from clipcompare.data.gpu_decode import DeviceDecoder

    decoder = DeviceDecoder(ds.root, [ds.samples[i].path for i in pending], transforms,
                            tensor_preprocesses(transforms, classifiers, slot), device, ds.reader)
    return InputPipeline(loader, decoder, device, slot, decoder)


def tensor_preprocesses(transforms: Sequence[Any], classifiers: Sequence[Classifier], slot: Sequence[int]) -> list[Any]:
    """The tensor equivalent of each distinct transform; a model whose transform has none is a UserError."""
    from clipcompare.data.tensor_preprocess import UnsupportedTransform, tensor_preprocess

    out = []
    for k, t in enumerate(transforms):
        try:
            out.append(tensor_preprocess(t))
        except UnsupportedTransform as exc:
            users = [c.name for c, s in zip(classifiers, slot) if s == k]
            raise UserError(f"--decode gpu: the preprocessing of {', '.join(users)} has no tensor equivalent "
                            f"({exc}); use --decode cpu") from None
    return out


def distinct_transforms(classifiers: Sequence[Classifier]) -> tuple[list[Any], list[int]]:
    """One transform per distinct preprocess object (models sharing one run it once), and each model's slot."""
    transforms: list[Any] = []
    slot: list[int] = []
    for clf in classifiers:
        same = [j for j, t in enumerate(transforms) if t is clf.preprocess]
        if not same:
            transforms.append(clf.preprocess)
        slot.append(same[0] if same else len(transforms) - 1)
    return transforms, slot
