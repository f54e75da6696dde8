"""Which layer a class-activation map is taken from, chosen by the model's structure.

pytorch-grad-cam needs a target layer with a spatial output. The choice follows the library's own
advice per architecture: a ResNet's last bottleneck (torchvision ``layer4[-1]``, open_clip's
ModifiedResNet ``visual.layer4[-1]`` — not its attention pool, which has no spatial map —, timm's
``layer4[-1]``), a ViT's last pre-attention norm (open_clip ``transformer.resblocks[-1].ln_1``, timm
``blocks[-1].norm1``, transformers CLIP/SigLIP ``encoder.layers[-1].layer_norm1``) with its tokens
reshaped back to the patch grid (a Swin's: the last stage's, ``layers[-1].blocks[-1].norm1``, channels-last
permuted to NCHW), a ConvNeXt's last stage (timm ``stages[-1]``). Only the image tower
is searched (a CLIP text transformer has the same structure). ``--layer NAME`` overrides the choice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from clipcompare.errors import UserError

# (container attribute, attribute of its last block) of transformer towers, in the order searched
TOKEN_BLOCKS: tuple[tuple[str, str], ...] = (
    ("resblocks", "ln_1"),  # open_clip VisionTransformer.transformer
    ("blocks", "norm1"),  # timm VisionTransformer, DeiT, EVA
    ("layers", "layer_norm1"),  # transformers CLIPVisionTransformer / SiglipVisionTransformer encoder
    ("layers", "ln_1"),  # torchvision VisionTransformer encoder
)
MAX_PREFIX_TOKENS = 16  # class token + registers a token sequence may start with


class TokensToGrid:
    """pytorch-grad-cam's ``reshape_transform`` for a ViT: [B, prefix + gh·gw, D] → [B, D, gh, gw].

    The prefix (class token, registers) is dropped. ``grid`` is the patch grid when the model says
    it; else the grid is the square one the token count allows. A 4-D activation is NCHW and passes
    through, unless ``channels_last``: a ``LayerNorm`` normalises the last dimension, so its 4-D output
    (a Swin block's ``norm1``: [B, H, W, C]) is permuted to [B, C, H, W] — else grad-cam reads H as channels.
    """

    def __init__(self, grid: tuple[int, int] | None = None, layer: str = "", channels_last: bool = False) -> None:
        self.grid = grid
        self.layer = layer
        self.channels_last = channels_last
        self.seen: tuple[int, int, int] | None = None  # (prefix, gh, gw) of the last call

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, (tuple, list)):
            x = x[0]
        if x.dim() == 4:
            return x.permute(0, 3, 1, 2) if self.channels_last else x
        if x.dim() != 3:
            raise UserError(f"--layer {self.layer}: its output has shape {tuple(x.shape)}, no spatial map; name a "
                            "convolutional layer or a transformer block's norm")
        b, n, d = x.shape
        gh, gw = self.grid or _square_grid(n, self.layer)
        prefix = n - gh * gw
        if prefix < 0:
            raise UserError(f"--layer {self.layer}: {n} tokens cannot hold a {gh}x{gw} patch grid")
        self.seen = (prefix, gh, gw)
        return x[:, prefix:, :].reshape(b, gh, gw, d).permute(0, 3, 1, 2)


def _square_grid(n: int, layer: str) -> tuple[int, int]:
    for prefix in range(MAX_PREFIX_TOKENS + 1):
        side = math.isqrt(n - prefix) if n > prefix else 0
        if side and side * side == n - prefix:
            return side, side
    raise UserError(f"--layer {layer}: {n} tokens are no square patch grid plus class/register tokens")


@dataclass
class TargetLayer:
    """The layer a map is taken from: its dotted name in the model, the module, and the reshape (ViT)."""

    name: str
    module: nn.Module
    reshape: TokensToGrid | None = None
    chosen_by: str = "architecture"  # or "--layer"
    why: str = field(default="")

    def to_dict(self) -> dict[str, object]:
        reshape = None
        if self.reshape is not None and self.reshape.seen is not None:
            prefix, gh, gw = self.reshape.seen
            reshape = f"tokens to {gh}x{gw} grid ({prefix} prefix token{'s' if prefix != 1 else ''} dropped)"
        return {"name": self.name, "chosen_by": self.chosen_by, "why": self.why, "reshape": reshape}


def image_part(model: nn.Module) -> nn.Module:
    """The image tower: ``visual`` (open_clip, trained checkpoints), ``vision_model`` (transformers), else the model."""
    for attr in ("visual", "vision_model"):
        tower = getattr(model, attr, None)
        if isinstance(tower, nn.Module):
            return tower
    return model


def _grid_of(module: nn.Module) -> tuple[int, int] | None:
    """The patch grid a ViT module (or one of its parents' conventions) declares."""
    grid = getattr(module, "grid_size", None)  # open_clip VisionTransformer
    if grid is None:
        grid = getattr(getattr(module, "patch_embed", None), "grid_size", None)  # timm
    if grid is None:
        return None
    return (int(grid[0]), int(grid[1])) if isinstance(grid, (tuple, list)) else (int(grid), int(grid))


def find_layer(model: nn.Module, name: str | None = None, *, model_name: str = "the model") -> TargetLayer:
    """The layer to explain in ``model``: ``name`` (dotted, ``[i]`` indexing allowed: ``visual.layer4[-1]``),
    else the architecture's usual one; UserError naming ``--layer`` when there is none."""
    names = {id(m): n for n, m in model.named_modules()}
    if name is not None:
        module = resolve_module(model, name, model_name)
        canonical = names.get(id(module), name)
        return TargetLayer(canonical, module, TokensToGrid(_grid_of(image_part(model)), canonical,
                                                           _normalises_last_dim(module)), "--layer", "named by --layer")
    tower = image_part(model)
    found = _by_structure(tower)
    if found is None:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-3:]
        hint = f" (its last convolutions: {', '.join(convs)})" if convs else ""
        raise UserError(f"{model_name}: no layer to explain found (no ResNet layer4, ViT blocks or ConvNeXt stages); "
                        f"name one with --layer NAME{hint}")
    module, why, tokens = found
    canonical = names[id(module)]
    reshape = TokensToGrid(_grid_of(tower), canonical, _normalises_last_dim(module)) if tokens else None
    return TargetLayer(canonical, module, reshape, "architecture", why)


def _normalises_last_dim(module: nn.Module) -> bool:
    """A plain LayerNorm (not timm's LayerNorm2d, a subclass that permutes): its 4-D output is channels-last."""
    return type(module) is nn.LayerNorm


def _last_token_block(tower: nn.Module) -> tuple[nn.Module, str] | None:
    """(the last block's norm, its name) of the LAST container of blocks: a hierarchical transformer (Swin:
    ``layers[i].blocks``) has one per stage, and the map is taken from the last stage, as grad-cam advises."""
    found = None
    for _, m in tower.named_modules():
        for container, norm in TOKEN_BLOCKS:
            blocks = getattr(m, container, None)
            if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) and isinstance(
                    getattr(blocks[-1], norm, None), nn.Module):
                found = (getattr(blocks[-1], norm), norm)
                break
    return found


def _by_structure(tower: nn.Module) -> tuple[nn.Module, str, bool] | None:
    """(module, why, whether its output is tokens) by the first structure that matches (ResNet, transformer, ...)."""
    for _, m in tower.named_modules():
        stage = getattr(m, "layer4", None)
        if isinstance(stage, nn.Sequential) and len(stage):
            return stage[-1], "ResNet: the last bottleneck of layer4 (not the pooling after it)", False
    token = _last_token_block(tower)
    if token is not None:
        return token[0], f"ViT/Swin: the last block's {token[1]}, tokens reshaped to the patch grid", True
    for _, m in tower.named_modules():
        stages = getattr(m, "stages", None)
        if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages):
            return stages[-1], "ConvNeXt-style: the last stage", False
    features = getattr(tower, "features", None)
    if isinstance(features, nn.Sequential) and len(features):
        return features[-1], "torchvision CNN: the last block of features", False
    return None


_INDEX = re.compile(r"\[(-?\d+)\]")


def resolve_module(model: nn.Module, name: str, model_name: str = "the model") -> nn.Module:
    """``a.b[-1].c`` or ``a.b.2.c`` → the submodule; UserError naming --layer when there is none."""
    parts = [p for p in _INDEX.sub(r".\1", name).split(".") if p]
    current: nn.Module = model
    for part in parts:
        child = None
        if re.fullmatch(r"-?\d+", part) and isinstance(current, (nn.Sequential, nn.ModuleList)):
            index = int(part)
            if -len(current) <= index < len(current):
                child = current[index]
        else:
            child = getattr(current, part, None)
        if not isinstance(child, nn.Module):
            tops = [n for n, _ in current.named_children()][:8]
            raise UserError(f"--layer {name}: {model_name} has no module {part!r} there "
                            f"(children: {', '.join(tops) or 'none'})")
        current = child
    return current
