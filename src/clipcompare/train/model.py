"""The trained model: an image tower (classifier backbone + projection head), a frozen CLIP text
tower, and CLIP's learnable temperature, with open_clip's ``encode_image`` / ``encode_text`` /
``forward`` interface so code written for open_clip models (zero-shot heads, CLIP_benchmark) works.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipcompare.errors import UserError
from clipcompare.train.config import CLIP_MEAN, CLIP_STD, TrainConfig

log = logging.getLogger(__name__)

INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps the scale at 100
CHECKPOINT_FORMAT = "clipcompare-train/1"


# --------------------------------------------------------------------------- pixels


class ResizeToUint8:
    """PIL image → uint8 tensor [3, S, S]: a plain resize (no crop), as the reference setup does.

    Training, the image cache and the trained model's ``preprocess`` all use this one function,
    which is what makes the cache exact.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class Normalize(nn.Module):
    """uint8 pixels → CLIP-normalised float, as one tensor op (on the training device)."""

    def __init__(self, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        single = pixels.dim() == 3
        x = (pixels.unsqueeze(0) if single else pixels).float()
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x[0] if single else x


class Preprocess:
    """The trained model's preprocessing: PIL image → normalised float tensor [3, S, S]."""

    def __init__(self, size: int) -> None:
        self.resize = ResizeToUint8(size)
        self.normalize = Normalize()

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.resize(img))


# --------------------------------------------------------------------------- towers


def strip_classifier(model: nn.Module) -> int:
    """Replace a torchvision classifier's last Linear layer (fc, classifier[-1], heads.head...) by
    Identity; return its input width, the backbone's feature size."""
    last: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise UserError(f"{type(model).__name__} has no Linear classifier layer to replace")
    name, linear = last
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return linear.in_features


class ImageTower(nn.Module):
    """Backbone features → Linear(F→F) + GELU + Linear(F→D): the reference projection head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.GELU(), nn.Linear(feature_dim, embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def text_tower(clip: nn.Module) -> tuple[nn.Module, bool]:
    """An open_clip model's text side, image tower and temperature dropped.

    ``CLIP`` keeps its text transformer at top level (token_embedding, transformer, ln_final,
    text_projection, attn_mask): the model itself, minus ``visual``/``logit_scale``, is the tower
    and its ``encode_text`` is used. ``CustomTextCLIP`` has a ``.text`` module called directly.
    Returns (tower, whether it is a stripped CLIP).
    """
    if hasattr(clip, "text") and isinstance(clip.text, nn.Module):
        return clip.text, False
    if not hasattr(clip, "encode_text") or not hasattr(clip, "token_embedding"):
        raise UserError(f"{type(clip).__name__} has no CLIP text tower")
    for name in ("visual", "logit_scale", "logit_bias"):
        if hasattr(clip, name):
            delattr(clip, name)
    return clip, True


class ContrastiveModel(nn.Module):
    """Trainable image tower + frozen text tower + temperature, open_clip-style."""

    def __init__(self, visual: ImageTower, text: nn.Module, text_is_clip: bool, *,
                 learn_temperature: bool = True) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.text_is_clip = text_is_clip
        for p in self.text.parameters():
            p.requires_grad_(False)
        scale = torch.tensor(INIT_LOGIT_SCALE)
        if learn_temperature:
            self.logit_scale = nn.Parameter(scale)
        else:  # --fixed-temperature: a constant, neither trained nor counted as a frozen weight
            self.register_buffer("logit_scale", scale)

    def train(self, mode: bool = True) -> "ContrastiveModel":
        super().train(mode)
        self.text.eval()  # frozen: its dropout (if any) stays off
        return self

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(image)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text.encode_text(text) if self.text_is_clip else self.text(text)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        """As open_clip's CLIP: (normalised image features, normalised text features, logit_scale.exp())."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.logit_scale.exp()

    def clamp_logit_scale(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


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
    from clipcompare.models.loading import load_model
    from clipcompare.models.spec import parse_spec

    image_spec, text_spec = parse_spec(config.image_model), parse_spec(config.text_model)
    if image_spec.family != "torchvision":
        raise UserError(f"--image-model must be a torchvision classifier (e.g. resnet50:IMAGENET1K_V2), not {image_spec}")
    if text_spec.family != "clip":
        raise UserError(f"--text-model must be an open_clip model (e.g. clip:ViT-B-32), not {text_spec}")
    image_loaded = load_model(image_spec, allow_random=config.allow_random)
    text_loaded = load_model(text_spec, allow_random=config.allow_random)
    random_weights = [str(s) for s, lm in ((image_spec, image_loaded), (text_spec, text_loaded)) if not lm.pretrained]
    clip = text_loaded.model
    clip_visual = getattr(clip, "visual", None) if keep_clip_visual else None
    model = assemble(image_loaded.model, clip, text_loaded.tokenizer, config)
    return Built(model, text_loaded.tokenizer, clip_visual, text_loaded.preprocess if keep_clip_visual else None,
                 random_weights)


def assemble(backbone: nn.Module, clip: nn.Module, tokenizer: Any, config: TrainConfig) -> ContrastiveModel:
    """A classifier (its last Linear replaced) + an open_clip model's text tower → ContrastiveModel."""
    from open_clip.transformer import QuickGELU

    from clipcompare.captions import embed_dim

    quick_gelu = any(isinstance(m, QuickGELU) for m in clip.modules())
    with torch.no_grad():
        width = embed_dim(clip, tokenizer, "cpu")  # before text_tower strips the model
    text, is_clip = text_tower(clip)
    if config.embed_dim is not None and config.embed_dim != width:
        raise UserError(f"--embed-dim {config.embed_dim} does not match the text tower's width {width} "
                        f"({config.text_model})")
    feature_dim = strip_classifier(backbone)
    visual = ImageTower(backbone, feature_dim, width)
    visual.image_size = config.image_size  # what `inspect` measures it at
    model = ContrastiveModel(visual, text, is_clip, learn_temperature=not config.fixed_temperature)
    model.quick_gelu = quick_gelu  # what load_trained must rebuild (QuickGELU has no weights to tell)
    return model


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


# --------------------------------------------------------------------------- loading a trained model


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint (tensors and plain data only: ``weights_only=True``); UserError when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a clipcompare train checkpoint")
    return ckpt


def load_trained(path: Path | str, *, device: str | torch.device = "cpu") -> ContrastiveModel:
    """The trained model (eval mode) from a checkpoint, without any download: the architectures are
    built with random weights and the stored state dict is loaded over them. ``model.config`` is its
    :class:`TrainConfig`, ``model.tokenizer`` the text model's tokenizer."""
    import open_clip
    from torchvision import models

    from clipcompare.models.loading import hf_hub_offline, register_tiny_configs
    from clipcompare.models.spec import parse_spec

    ckpt = read_checkpoint(Path(path))
    config = TrainConfig.from_dict(ckpt["config"])
    register_tiny_configs()
    arch = parse_spec(config.text_model).arch
    backbone = models.get_model(parse_spec(config.image_model).arch, weights=None)
    # the checkpoint holds every weight: an hf-hub:/local-dir: text model only lends its config (and tokenizer)
    with hf_hub_offline():
        clip = open_clip.create_model(arch, force_quick_gelu=bool(ckpt["quick_gelu"]), load_weights=False)
        tokenizer = open_clip.get_tokenizer(arch)
    model = assemble(backbone, clip, tokenizer, config)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise UserError(f"{path} does not match its architecture (missing {missing[:2]}, unexpected {unexpected[:2]})")
    model.config, model.tokenizer = config, tokenizer
    return model.eval().to(device)
