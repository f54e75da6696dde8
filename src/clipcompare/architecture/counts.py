"""Parameter counts and the layer census of an image tower (conv/linear/attention/norm, blocks)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from clipcompare.architecture.tree import is_attention, layer_names


@dataclass
class LayerCounts:
    """Layer census of an image tower (for the side-by-side ResNet vs ViT table).

    ``linear`` counts ``nn.Linear`` modules plus one per ``nn.MultiheadAttention`` with a packed
    q/k/v input projection (``in_proj_weight``), which is a linear layer that is not a module.
    """

    conv: int
    linear: int
    attention: int
    blocks: int
    norm: int
    params: int
    flops: int


def count_params(module: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters())


def count_layers(tower: nn.Module, flops: int) -> LayerCounts:
    """Conv/linear/attention/norm layers, residual blocks and params of an image tower."""
    conv = linear = attention = norm = 0
    for m in tower.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            conv += 1
        elif isinstance(m, nn.Linear):
            linear += 1
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            norm += 1
        if is_attention(m):
            attention += 1
            if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
                linear += 1  # packed q/k/v projection: a linear layer that is not a module
    layers = layer_names(tower)
    if layers:
        blocks = sum(len(getattr(tower, n)) for n in layers)
    else:
        resblocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
        blocks = len(resblocks) if resblocks is not None else 0
    return LayerCounts(conv, linear, attention, blocks, norm, count_params(tower), flops)
