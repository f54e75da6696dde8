"""Image embeddings for retrieval: every decodable image of a split through ``model.encode_image``.

Works with any module that has open_clip's ``encode_image``; the caption side is
:func:`clipcompare.captions.caption_embeddings`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipcompare.data.coco import CaptionedImages

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_images(
    model: nn.Module,
    images: CaptionedImages,
    preprocess: Callable[[Any], torch.Tensor],
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    workers: int = 0,
) -> tuple[torch.Tensor, list[int], list[int]]:
    """L2-normalised ``model.encode_image`` of every decodable image: (embeddings [K, D], kept, skipped).

    ``kept`` lists the indices into ``images`` of the rows in order; ``skipped`` the undecodable
    ones (logged). Decoding is evaluate's (:func:`decode.batch_loader`), and a ``preprocess`` that
    :func:`split_preprocess` can split ends with its ``/255`` + normalise once per batch, on the device.
    """
    from clipcompare.data.decode import DecodedImages, batch_loader
    from clipcompare.data.tensor_preprocess import split_preprocess

    device = torch.device(device)
    split = split_preprocess(preprocess)
    decoded = DecodedImages(images.root, images.paths, [split or preprocess], images.reader)
    feats: list[torch.Tensor] = []
    kept: list[int] = []
    skipped: list[int] = []
    for batch in batch_loader(decoded, batch_size, workers=workers, device=device):
        for pos, reason in batch.failures:
            log.warning("skipping unreadable image %s: %s", images.paths[pos], reason)
            skipped.append(pos)
        if len(batch.positions):
            x = batch.tensors[0].to(device, non_blocking=True)
            out = model.encode_image(split.finish(x) if split is not None else x)
            feats.append(F.normalize(out.float(), dim=-1))
            kept.extend(batch.positions.tolist())
    if not feats:
        return torch.empty(0, 0, device=device), kept, skipped
    return torch.cat(feats), kept, skipped
