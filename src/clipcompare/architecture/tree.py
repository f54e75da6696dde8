"""Reading image-tower module trees: ``layerN`` children, attention modules, int-or-pair sizes."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

_LAYER = re.compile(r"^layer(\d+)$")


def as_int(value: int | Sequence[int]) -> int:
    """A size given as ``n`` or ``(n, n)`` as ``n``."""
    return int(value[0]) if isinstance(value, (tuple, list)) else int(value)


def layer_names(tower: nn.Module) -> list[str]:
    """The ``layer1``..``layerN`` children of a ResNet-style tower, in order (empty for others)."""
    return [name for name, _ in tower.named_children() if _LAYER.match(name)]


def is_attention(m: nn.Module) -> bool:
    """``nn.MultiheadAttention``, or a module with q/k/v projections (CLIP's attention pooling)."""
    return isinstance(m, nn.MultiheadAttention) or all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj"))
