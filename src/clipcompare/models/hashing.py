"""Cheap, stable fingerprints of model weights (for caches and run.json)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def weights_fingerprint(model: nn.Module, sample: int = 4096) -> str:
    """SHA-256 over every tensor's name, shape and a strided sample of its values.

    Hashing all 100M parameters would cost seconds; a strided sample of each tensor separates any
    two real checkpoints (or two random inits) while staying fast.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // sample)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(flat[::step].to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def model_identity(name: str, model: nn.Module) -> str:
    """What a cache of a model's outputs (zero-shot heads, caption embeddings) is keyed by.

    The name, a fingerprint of the weights, and the activations the model was built with, read off
    the module: the same weights built with GELU instead of QuickGELU give different embeddings, and
    a result cached under one must never be served for the other.
    """
    from clipcompare.models.build_info import activation_names

    return f"{name}#{weights_fingerprint(model)}#{'+'.join(activation_names(model)) or 'none'}"
