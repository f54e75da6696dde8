"""Image↔text retrieval Recall@K, with CLIP_benchmark's definition (``metrics/zeroshot_retrieval.py``).

* ``text_retrieval_recall@K`` (image→text): for each image, a hit when any of its captions is among
  the K texts most similar to it; averaged over images.
* ``image_retrieval_recall@K`` (text→image): for each caption, a hit when its image is among the K
  images most similar to it; averaged over captions.

Similarity is the dot product of L2-normalised embeddings; ranks come from ``torch.topk`` as in
CLIP_benchmark. A K larger than the gallery is clamped to the gallery's size (CLIP_benchmark would
fail). Works with any module that has open_clip's ``encode_image`` / ``encode_text``.
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
import torch.nn.functional as F
from torch import nn

from clipcompare.data.coco import CaptionedImages, CaptionSplits
from clipcompare.errors import UserError
from clipcompare.evaluation.metrics import RETRIEVAL_KS, recall_key
from clipcompare.models.spec import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = RETRIEVAL_KS


@torch.no_grad()
def recall_at_k(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Recall@K both ways from embeddings ([I, D] images, [T, D] texts, the image index of each text).

    Processes ``batch_size`` query rows at a time, so 25k captions × 5k images needs ~100 MB at most.
    """
    owner = torch.as_tensor(text_to_image, dtype=torch.long, device=text_emb.device)
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if owner.shape != (n_txt,):
        raise ValueError(f"text_to_image has {tuple(owner.shape)} entries for {n_txt} texts")
    if n_img == 0 or n_txt == 0:
        raise ValueError("recall needs at least one image and one text")
    ks = sorted({int(k) for k in ks})
    if ks[0] < 1:
        raise ValueError("K must be at least 1")
    image_emb, text_emb = image_emb.float(), text_emb.float().to(image_emb.device)
    owner = owner.to(image_emb.device)

    # text→image: is the caption's own image in its top K?
    t2i = torch.zeros(len(ks), device=image_emb.device)
    kmax = min(ks[-1], n_img)
    for s in range(0, n_txt, batch_size):
        top = torch.topk(text_emb[s:s + batch_size] @ image_emb.T, kmax, dim=1).indices
        hit = top == owner[s:s + batch_size, None]
        for j, k in enumerate(ks):
            t2i[j] += hit[:, :min(k, kmax)].any(dim=1).sum()

    # image→text: is any of the image's captions in its top K?
    i2t = torch.zeros(len(ks), device=image_emb.device)
    kmax = min(ks[-1], n_txt)
    for s in range(0, n_img, batch_size):
        top = torch.topk(image_emb[s:s + batch_size] @ text_emb.T, kmax, dim=1).indices
        rows = torch.arange(s, min(s + batch_size, n_img), device=image_emb.device)
        hit = owner[top] == rows[:, None]
        for j, k in enumerate(ks):
            i2t[j] += hit[:, :min(k, kmax)].any(dim=1).sum()

    out: dict[str, float] = {}
    for j, k in enumerate(ks):
        out[recall_key("text", k)] = i2t[j].item() / n_img
    for j, k in enumerate(ks):
        out[recall_key("image", k)] = t2i[j].item() / n_txt
    return out


@torch.no_grad()
def recalls_of_loaded(
    image_emb: torch.Tensor, kept: Sequence[int], text_emb: torch.Tensor, owner: Sequence[int],
    ks: Sequence[int] = DEFAULT_KS,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Recall@K over the images that loaded (row r of ``image_emb`` is image ``kept[r]``) and their
    captions (``text_emb`` holds every caption, ``owner`` each one's image): the captions of the
    images left out leave with them. Returns (the recalls, ``mean_recall@1`` when K=1 is among
    them, ``images`` and ``captions`` counted; the kept captions' embeddings; each one's row)."""
    row_of = {int(idx): row for row, idx in enumerate(kept)}
    keep = [t for t, i in enumerate(owner) if i in row_of]
    rows = torch.tensor([row_of[owner[t]] for t in keep], dtype=torch.long, device=image_emb.device)
    texts = text_emb[torch.tensor(keep, dtype=torch.long, device=text_emb.device)] if len(keep) < len(owner) else text_emb
    texts = texts.to(image_emb.device)
    result: dict[str, Any] = recall_at_k(image_emb, texts, rows, ks)
    if 1 in ks:
        result["mean_recall@1"] = (result["text_retrieval_recall@1"] + result["image_retrieval_recall@1"]) / 2
    result.update(images=len(kept), captions=len(keep))
    return result, texts, rows


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
    decoded = DecodedImages(images.root, images.paths, [split or preprocess])
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
    ks: Sequence[int] = DEFAULT_KS,
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
    ks: tuple[int, ...] = DEFAULT_KS
    cache_dir: Path | None = None  # caption-embedding cache; None: no disk cache
    out: Path | None = None  # writes out/retrieval.json after every model
    command: tuple[str, ...] = ()


def check_retrieval_specs(specs: Sequence[ModelSpec]) -> None:
    """Refuse supervised classifiers before any data or model is loaded: they have no text side."""
    for spec in specs:
        if spec.family == "torchvision":
            raise UserError(f"{spec.name} is a supervised classifier with no text encoder; retrieval needs a "
                            f"CLIP-style model (clip:ARCH, or a trained checkpoint)")


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
