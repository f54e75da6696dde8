"""``clipcompare retrieval``: Recall@K of one model on a caption split, then of several, into retrieval.json.

Works with any module that has open_clip's ``encode_image`` / ``encode_text``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipcompare.data.coco import CaptionedImages, CaptionSplits
from clipcompare.errors import UserError
from clipcompare.models.spec import ModelSpec
from clipcompare.retrieval.encode import encode_images
from clipcompare.retrieval.metrics import RETRIEVAL_KS, recalls_of_loaded

log = logging.getLogger(__name__)


def evaluate(
    model: nn.Module,
    images: CaptionedImages,
    *,
    tokenizer: Callable[..., torch.Tensor] | None,
    preprocess: Callable[[Any], torch.Tensor],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    caption_cache_dir: Path | None = None,
    model_id: str | None = None,
    ks: Sequence[int] = RETRIEVAL_KS,
    workers: int = 0,
    text_embeddings: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Recall@K of ``model`` on ``images``: the recalls plus images/captions counted and images skipped.

    Undecodable images are left out with their captions (counted in ``skipped``). ``model_id`` keys
    the caption cache (default: the weights fingerprint of the whole model). ``text_embeddings``
    ([5 × len(images), D], L2-normalised, in ``flat_captions`` order) skips the text side, e.g. a
    training loop's cached embeddings of a frozen text tower; ``tokenizer`` may then be None.
    """
    from clipcompare.captions import caption_embeddings
    from clipcompare.models.hashing import model_identity

    start = time.perf_counter()
    texts, owner = images.flat_captions()
    if text_embeddings is not None:
        if text_embeddings.shape[0] != len(texts):
            raise ValueError(f"text_embeddings has {text_embeddings.shape[0]} rows for {len(texts)} captions")
        text_emb = text_embeddings.float().to(device)
    else:
        model_id = model_id or model_identity(type(model).__name__, model)
        text_emb = caption_embeddings(model, tokenizer, texts, model_id=model_id, cache_dir=caption_cache_dir,
                                      device=device)
    image_emb, kept, skipped = encode_images(model, images, preprocess, batch_size=batch_size, device=device,
                                             workers=workers)
    if not kept:
        raise UserError(f"{images.name} split: none of its {len(images)} images could be decoded")
    result, _, _ = recalls_of_loaded(image_emb, kept, text_emb, owner, ks)
    result.update(split=images.name, skipped=len(skipped), skipped_examples=[images.paths[i] for i in skipped[:5]],
                  seconds=round(time.perf_counter() - start, 3))
    return result


# --------------------------------------------------------------------------- several models, one split


@dataclass(frozen=True)
class RetrievalOptions:
    """Settings of a ``clipcompare retrieval`` run (stored in retrieval.json)."""

    batch_size: int = 64
    device: str | None = None
    workers: int = 0
    allow_random: bool = False
    ks: tuple[int, ...] = RETRIEVAL_KS
    cache_dir: Path | None = None  # caption-embedding cache; None: no disk cache
    out: Path | None = None  # writes out/retrieval.json after every model
    command: tuple[str, ...] = ()


def check_retrieval_specs(specs: Sequence[ModelSpec]) -> None:
    """Refuse supervised classifiers before any data or model is loaded: they have no text side."""
    for spec in specs:
        if spec.supervised:
            raise UserError(f"{spec.name} is a supervised classifier with no text encoder; retrieval needs a "
                            f"CLIP-style model (clip:ARCH, hf:ORG/REPO, or a trained checkpoint)")


def run_retrieval(specs: Sequence[ModelSpec], splits: CaptionSplits, on: str,
                  options: RetrievalOptions) -> dict[str, Any]:
    """Evaluate every model on split ``on``; the document written to retrieval.json (and returned)."""
    from clipcompare.evaluation import resolve_device
    from clipcompare.fileio import atomic_write_bytes
    from clipcompare.models.hashing import model_identity
    from clipcompare.models.loading import load_model, seeded_init
    from clipcompare.rundir import now_iso, versions

    check_retrieval_specs(specs)
    images = splits[on]
    device = resolve_device(options.device)
    doc: dict[str, Any] = {
        "command": list(options.command), "start_time": now_iso(), "evaluated_on": on, "split": splits.description,
        "settings": {"batch_size": options.batch_size, "ks": list(options.ks), "device": str(device)},
        "definition": "CLIP_benchmark zeroshot_retrieval: text_retrieval = image→text (hit when any of the "
                      "image's captions is in its top K), image_retrieval = text→image",
        "versions": versions(), "results": [],
    }
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        with seeded_init():
            loaded = load_model(spec, allow_random=options.allow_random, device=device)
        model = loaded.model
        if not (hasattr(model, "encode_image") and hasattr(model, "encode_text") and loaded.tokenizer is not None):
            raise UserError(f"{spec.name} has no encode_image/encode_text/tokenizer; retrieval needs a CLIP-style model")
        model_id = model_identity(spec.name, model)
        log.info("retrieval: %s on %d %s images", spec.name, len(images), on)
        result = evaluate(model, images, tokenizer=loaded.tokenizer, preprocess=loaded.preprocess,
                          batch_size=options.batch_size, device=device, caption_cache_dir=options.cache_dir,
                          model_id=model_id, ks=options.ks, workers=options.workers)
        doc["results"].append({"model": spec.name, "model_id": model_id, "pretrained": loaded.pretrained, **result})
        del loaded, model
        if options.out is not None:  # after every model, so an interruption keeps what is done
            atomic_write_bytes(options.out / "retrieval.json", json.dumps(doc, indent=2).encode())
    doc["end_time"] = now_iso()
    if options.out is not None:
        atomic_write_bytes(options.out / "retrieval.json", json.dumps(doc, indent=2).encode())
    return doc
