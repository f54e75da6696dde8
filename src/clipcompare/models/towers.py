"""Model-level helpers shared by the tasks: which submodule is the image tower."""

from __future__ import annotations

from torch import nn


def image_tower(model: nn.Module) -> nn.Module:
    """The image encoder: ``model.visual`` for CLIP, the model itself for a classifier."""
    visual = getattr(model, "visual", None)
    return visual if isinstance(visual, nn.Module) else model
