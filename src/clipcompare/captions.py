"""Caption embeddings from a (frozen) CLIP text tower, encoded once and cached on disk.

Shared by ``retrieval`` and ``train``: every caption is encoded with :func:`zeroshot.encode_prompts`
(each batch trimmed to its longest caption, equal within 1e-5 to the full 77-token forward) and the
[N, D] L2-normalised result is stored under ``CACHE/captions/<key>.pt``, the key covering the model
identity (``models.hashing.model_identity``: name, weights fingerprint, activations) and every caption
in order. Training then reads embeddings instead of running the text tower every step.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from clipcompare.cache import cached_tensor
from clipcompare.zeroshot import encode_prompts

log = logging.getLogger(__name__)

# captions tokenised at once: [CHUNK, 77] int64 tokens stay ~20 MB even for COCO's 590k captions
CHUNK = 32_768


def captions_key(model_id: str, captions: Sequence[str]) -> str:
    """Cache key over the model identity and the captions (in order)."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": model_id, "n": len(captions)}).encode())
    for c in captions:
        h.update(c.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def caption_cache_path(cache_dir: Path, model_id: str, captions: Sequence[str]) -> Path:
    return Path(cache_dir) / "captions" / f"{captions_key(model_id, captions)}.pt"


def embed_dim(model: nn.Module, tokenizer: Callable[..., torch.Tensor], device: str | torch.device) -> int:
    """The text embedding width (one tiny forward: every open_clip-like model answers it the same way)."""
    return int(encode_prompts(model, tokenizer, ["a"], device=device).shape[1])


def caption_embeddings(
    model: nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    captions: Sequence[str],
    *,
    model_id: str,
    cache_dir: Path | None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """L2-normalised text embeddings [N, D] of ``captions`` in order (float32, on ``device``).

    ``model`` is anything :func:`encode_prompts` takes (an open_clip CLIP, or a module with
    ``encode_text``); ``model_id`` must change whenever its text weights do. ``cache_dir=None`` disables
    the disk cache.
    """
    captions = list(captions)

    def build() -> torch.Tensor:
        parts = []
        for start in range(0, len(captions), CHUNK):
            parts.append(encode_prompts(model, tokenizer, captions[start:start + CHUNK],
                                        batch_size=batch_size, device=device))
            log.info("encoded %d / %d captions", min(start + CHUNK, len(captions)), len(captions))
        return torch.cat(parts) if parts else torch.empty(0, embed_dim(model, tokenizer, device), device=device)

    path = caption_cache_path(cache_dir, model_id, captions) if cache_dir is not None else None
    # a file with another count (a hash collision, a foreign file) is never trusted: rebuilt and replaced
    out = cached_tensor(path, build, device=device, what="caption embeddings", rows=len(captions))
    return out.to(device=device, dtype=torch.float32)
