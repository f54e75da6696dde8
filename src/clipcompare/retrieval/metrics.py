"""Image↔text retrieval Recall@K, with CLIP_benchmark's definition (``metrics/zeroshot_retrieval.py``).

* ``text_retrieval_recall@K`` (image→text): for each image, a hit when any of its captions is among
  the K texts most similar to it; averaged over images.
* ``image_retrieval_recall@K`` (text→image): for each caption, a hit when its image is among the K
  images most similar to it; averaged over captions.

Similarity is the dot product of L2-normalised embeddings; ranks come from ``torch.topk`` as in
CLIP_benchmark. A K larger than the gallery is clamped to the gallery's size (CLIP_benchmark would
fail). Pure functions: embeddings in, a dict out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10)


def recall_key(direction: str, k: int) -> str:
    """CLIP_benchmark's metric name: ``text`` retrieval is image→text, ``image`` retrieval is text→image."""
    return f"{direction}_retrieval_recall@{k}"


# the six recalls every retrieval table shows: image→text R@1/5/10, then text→image R@1/5/10
RECALL_KEYS: tuple[str, ...] = tuple(recall_key(d, k) for d in ("text", "image") for k in RETRIEVAL_KS)


@torch.no_grad()
def recall_at_k(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = RETRIEVAL_KS,
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
    ks: Sequence[int] = RETRIEVAL_KS,
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
