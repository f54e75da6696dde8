"""Building the model to train: the image model's classifier + the text model's frozen tower, loaded
with their weights, assembled into :class:`clipcompare.models.contrastive.ContrastiveModel` (the
model itself, its checkpoints and ``load_trained`` live in the model layer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from clipcompare.errors import UserError
from clipcompare.models.contrastive import Architecture, ContrastiveModel, assemble
from clipcompare.models.loading import load_model
from clipcompare.models.spec import parse_spec
from clipcompare.train.config import TrainConfig


@dataclass
class Built:
    """A freshly built model and what was learnt while building it."""

    model: ContrastiveModel
    tokenizer: Any
    clip_visual: nn.Module | None = None  # the text model's own image tower (the reference row)
    clip_preprocess: Any = None
    random_weights: list[str] = field(default_factory=list)


def build_model(config: TrainConfig, *, keep_clip_visual: bool = False) -> Built:
    """Image tower from ``config.image_model`` + text tower of ``config.text_model`` (weights loaded
    when available; random only with ``allow_random``)."""
    image_spec, text_spec = parse_spec(config.image_model), parse_spec(config.text_model)
    if not image_spec.supervised:
        raise UserError(f"--image-model must be a torchvision or timm classifier (e.g. resnet50:IMAGENET1K_V2, "
                        f"timm:resnet50.a1_in1k), not {image_spec}")
    if text_spec.family not in ("clip", "hf"):
        raise UserError(f"--text-model must be an open_clip model (e.g. clip:ViT-B-32) or a transformers CLIP/SigLIP "
                        f"(hf:ORG/REPO, hf:PATH), not {text_spec}")
    image_loaded = load_model(image_spec, allow_random=config.allow_random)
    text_loaded = load_model(text_spec, allow_random=config.allow_random)
    random_weights = [str(s) for s, lm in ((image_spec, image_loaded), (text_spec, text_loaded)) if not lm.pretrained]
    clip = text_loaded.model
    clip_visual = getattr(clip, "visual", None) if keep_clip_visual else None
    architecture = architecture_for(config, clip, text_loaded.tokenizer)
    model = assemble(architecture, image_loaded.model, clip, text_loaded.tokenizer)
    return Built(model, text_loaded.tokenizer, clip_visual, text_loaded.preprocess if keep_clip_visual else None,
                 random_weights)


def architecture_for(config: TrainConfig, clip: nn.Module, tokenizer: Any) -> Architecture:
    """The :class:`Architecture` a run trains: the settings, plus what the loaded text model tells
    (its activation, its embedding width, which ``--embed-dim`` must match)."""
    from open_clip.transformer import QuickGELU

    from clipcompare.captions import embed_dim

    with torch.no_grad():
        width = embed_dim(clip, tokenizer, "cpu")
    if config.embed_dim is not None and config.embed_dim != width:
        raise UserError(f"--embed-dim {config.embed_dim} does not match the text tower's width {width} "
                        f"({config.text_model})")
    return Architecture(
        image_arch=image_arch(config.image_model),
        text_model=config.text_model,
        quick_gelu=any(isinstance(m, QuickGELU) for m in clip.modules()),
        embed_dim=width,
        image_size=config.image_size,
        learn_temperature=not config.fixed_temperature,
    )


def image_arch(image_model: str) -> str:
    """What a checkpoint records of the image model: the torchvision builder (``resnet50``) or the timm
    architecture (``timm:resnet50``); the tag only chose the starting weights, which the checkpoint holds."""
    spec = parse_spec(image_model)
    return f"timm:{spec.arch}" if spec.family == "timm" else spec.arch


def parameter_counts(model: ContrastiveModel) -> dict[str, int]:
    """Exact counts: trainable (image tower + temperature when learnt) and frozen (text tower)."""
    image = sum(p.numel() for p in model.visual.parameters())
    temperature = model.logit_scale.numel() if isinstance(model.logit_scale, nn.Parameter) else 0
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad),
        "backbone": sum(p.numel() for p in model.visual.backbone.parameters()),
        "head": sum(p.numel() for p in model.visual.head.parameters()),
        "image_tower": image,
        "temperature": temperature,
    }
