"""How FLOPs are counted: :class:`torch.utils.flop_counter.FlopCounterMode`, with attention countable.

FlopCounterMode counts 2 FLOPs per multiply-accumulate of convolutions, matmuls and attention, and
nothing for elementwise ops, norms or pooling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

FLOPS_NOTE = (
    "FLOPs as torch.utils.flop_counter.FlopCounterMode counts them: 2 × multiply-accumulates of "
    "convolutions, matmuls and attention; elementwise ops, norms and pooling count 0 "
    "(nn.MultiheadAttention's fused fast path is switched off so its matmuls are counted)"
)


@contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Turn off ``nn.MultiheadAttention``'s fused inference fast path for the duration.

    In eval mode under ``no_grad`` the fast path runs one fused op that FlopCounterMode has no
    formula for, so a ViT's attention would silently count 0 FLOPs (5.9 instead of 8.8 GFLOPs for
    ViT-B/32). The unfused path computes the same thing with countable matmuls.
    """
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)
