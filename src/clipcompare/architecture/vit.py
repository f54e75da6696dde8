"""Shape of a ViT image tower (open_clip ``VisionTransformer`` layout): patches, width, depth, heads, tokens."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from clipcompare.architecture.tree import as_int
from clipcompare.models.build_info import activation_names


@dataclass
class ViTSummary:
    """Shape of a ViT image tower (open_clip ``VisionTransformer`` layout)."""

    image_size: int
    patch_size: int
    width: int
    blocks: int
    heads: int
    mlp_dim: int
    output_dim: int
    grid: int
    tokens: int
    class_token: bool
    activations: list[str]


def vit_summary(tower: nn.Module) -> ViTSummary | None:
    """Patch size, width, depth, heads, output dim and token count of an open_clip ViT tower."""
    resblocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    conv = getattr(tower, "conv1", None)
    if resblocks is None or not isinstance(conv, nn.Conv2d):
        return None
    attn = next(m for m in resblocks[0].modules() if isinstance(m, nn.MultiheadAttention))
    mlp = [m for m in resblocks[0].modules() if isinstance(m, nn.Linear) and m is not attn.out_proj]
    patch = as_int(conv.kernel_size)
    image = as_int(getattr(tower, "image_size", 224))
    grid = image // patch
    class_token = getattr(tower, "class_embedding", None) is not None
    proj = getattr(tower, "proj", None)
    output_dim = getattr(tower, "output_dim", None) or (proj.shape[1] if proj is not None else conv.out_channels)
    return ViTSummary(
        image_size=image, patch_size=patch, width=conv.out_channels, blocks=len(resblocks),
        heads=attn.num_heads, mlp_dim=mlp[0].out_features if mlp else 0, output_dim=int(output_dim),
        grid=grid, tokens=grid * grid + int(class_token), class_token=class_token,
        activations=activation_names(tower),
    )
