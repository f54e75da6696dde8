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
