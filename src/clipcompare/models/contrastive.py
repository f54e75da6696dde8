"""The model ``clipcompare train`` trains: an image tower (classifier backbone + projection head), a
frozen CLIP text tower and CLIP's temperature, with open_clip's ``encode_image`` / ``encode_text`` /
``forward`` interface so code written for open_clip models (zero-shot heads, CLIP_benchmark) works.

Its checkpoints store an :class:`Architecture` record beside the weights, so :func:`load_trained`
rebuilds the model from the checkpoint alone, without the training settings and without any download.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipcompare.errors import UserError
from clipcompare.models.build_info import LoadedModel
from clipcompare.models.clip import clip_arch, quiet_random_init, register_tiny_configs
from clipcompare.models.spec import ModelSpec, parse_spec
from clipcompare.models.weights import hf_hub_offline, read_weights

# OpenAI CLIP's pixel statistics: the reference setup normalises with them
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps the scale at 100

CHECKPOINT_FORMAT = "clipcompare-train/2"  # /2: the checkpoint holds its Architecture record
LEGACY_CHECKPOINT_FORMAT = "clipcompare-train/1"  # the record is derived from the training config


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


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Architecture:
    """What builds a trained model besides its weights; stored in its checkpoints."""

    image_arch: str  # the classifier the image tower's backbone is built from: torchvision (resnet50) or timm:ARCH
    text_model: str  # the clip: (or hf:) spec of the frozen text tower: its config and tokenizer
    quick_gelu: bool  # the text tower's activation (QuickGELU has no weights to tell it by)
    embed_dim: int  # the shared embedding width (the text tower's)
    image_size: int  # the square input the image tower is trained at
    learn_temperature: bool  # logit_scale a parameter (else a constant buffer)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: Path | str) -> Architecture:
        """The record as stored; UserError naming ``where`` when it is not one."""
        types = {"image_arch": str, "text_model": str, "quick_gelu": bool, "embed_dim": int, "image_size": int,
                 "learn_temperature": bool}
        if not isinstance(data, dict) or set(data) != set(types) or not all(
                type(data[k]) is t for k, t in types.items()):
            raise UserError(f"{where}: its architecture record is not one clipcompare writes "
                            f"(expected {', '.join(f.name for f in fields(cls))})")
        return cls(**data)


class ImageTower(nn.Module):
    """Backbone features → Linear(F→F) + GELU + Linear(F→D): the reference projection head.

    ``image_size`` is the input it is trained at, as open_clip's towers carry theirs."""

    def __init__(self, backbone: nn.Module, feature_dim: int, embed_dim: int, *, image_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.GELU(), nn.Linear(feature_dim, embed_dim))
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def strip_classifier(model: nn.Module) -> int:
    """Replace a torchvision classifier's last Linear layer (fc, classifier[-1], heads.head...) by
    Identity; return its input width, the backbone's feature size. A timm model drops its classifier
    itself (``reset_classifier(0)``) and then returns its pooled pre-logit features."""
    if hasattr(model, "reset_classifier") and hasattr(model, "pretrained_cfg"):
        model.reset_classifier(0)
        return int(getattr(model, "head_hidden_size", None) or model.num_features)
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
    """Trainable image tower + frozen text tower + temperature, open_clip-style.

    ``architecture`` is the record its checkpoints store; ``tokenizer`` the text model's."""

    def __init__(self, visual: ImageTower, text: nn.Module, text_is_clip: bool, *, architecture: Architecture,
                 tokenizer: Callable[..., torch.Tensor] | None = None) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.text_is_clip = text_is_clip
        self.architecture = architecture
        self.tokenizer = tokenizer
        for p in self.text.parameters():
            p.requires_grad_(False)
        scale = torch.tensor(INIT_LOGIT_SCALE)
        if architecture.learn_temperature:
            self.logit_scale = nn.Parameter(scale)
        else:  # --fixed-temperature: a constant, neither trained nor counted as a frozen weight
            self.register_buffer("logit_scale", scale)

    def train(self, mode: bool = True) -> ContrastiveModel:
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


def assemble(architecture: Architecture, backbone: nn.Module, clip: nn.Module,
             tokenizer: Callable[..., torch.Tensor] | None) -> ContrastiveModel:
    """A torchvision classifier (its last Linear replaced by the head) + an open_clip model's text
    tower → :class:`ContrastiveModel`, as ``architecture`` says."""
    text, is_clip = text_tower(clip)
    feature_dim = strip_classifier(backbone)
    visual = ImageTower(backbone, feature_dim, architecture.embed_dim, image_size=architecture.image_size)
    return ContrastiveModel(visual, text, is_clip, architecture=architecture, tokenizer=tokenizer)


def text_model_config(text_model: str) -> str:
    """The open_clip model name a ``clip:`` spec builds (an activation suffix taken off)."""
    spec = parse_spec(text_model)
    return spec.arch if spec.schema else clip_arch(spec)[0]


def build_untrained(architecture: Architecture) -> ContrastiveModel:
    """``architecture`` with random weights, built without any download (a checkpoint holds every weight:
    an hf-hub:/local-dir: text model only lends its config and tokenizer)."""
    import open_clip
    from torchvision import models

    register_tiny_configs()
    spec = parse_spec(architecture.text_model)
    if architecture.image_arch.startswith("timm:"):
        import timm

        backbone = timm.create_model(architecture.image_arch.removeprefix("timm:"), pretrained=False)
    else:
        backbone = models.get_model(architecture.image_arch, weights=None)
    if spec.family == "hf":
        from clipcompare.models.hf import build_hf_untrained

        clip, tokenizer = build_hf_untrained(spec)
        return assemble(architecture, backbone, clip, tokenizer)
    name = text_model_config(architecture.text_model)
    with hf_hub_offline(), quiet_random_init():
        clip = open_clip.create_model(name, force_quick_gelu=architecture.quick_gelu, load_weights=False)
        tokenizer = open_clip.get_tokenizer(name)
    return assemble(architecture, backbone, clip, tokenizer)


# --------------------------------------------------------------------------- checkpoints


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """A checkpoint (tensors and plain data only: ``weights_only=True``); UserError when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    ckpt = read_weights(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (CHECKPOINT_FORMAT, LEGACY_CHECKPOINT_FORMAT):
        raise UserError(f"{path} is not a clipcompare train checkpoint")
    return ckpt


def checkpoint_architecture(ckpt: dict[str, Any], path: Path | str) -> Architecture:
    """The checkpoint's :class:`Architecture`: stored (format /2), or derived from the training config
    and weights of a format /1 checkpoint."""
    if ckpt.get("format") == CHECKPOINT_FORMAT:
        return Architecture.from_dict(ckpt.get("architecture"), path)
    try:
        config, state = ckpt["config"], ckpt["model"]
        return Architecture(
            image_arch=parse_spec(config["image_model"]).arch,
            text_model=config["text_model"],
            quick_gelu=bool(ckpt["quick_gelu"]),
            embed_dim=int(state["visual.head.2.weight"].shape[0]),  # the head's output width
            image_size=int(config.get("image_size", 224)),
            learn_temperature=not config.get("fixed_temperature", False),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: a {LEGACY_CHECKPOINT_FORMAT} checkpoint without {exc}") from None


def load_trained(path: Path | str, *, device: str | torch.device = "cpu") -> ContrastiveModel:
    """The trained model (eval mode) from a checkpoint alone, without any download: the architecture
    its record names is built with random weights and the stored state dict is loaded over it."""
    ckpt = read_checkpoint(path)
    model = build_untrained(checkpoint_architecture(ckpt, path))
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise UserError(f"{path} does not match its architecture (missing {missing[:2]}, unexpected {unexpected[:2]})")
    return model.eval().to(device)


def save_record(model: ContrastiveModel) -> dict[str, Any]:
    """What a checkpoint stores of ``model`` to rebuild it: format, architecture record and weights."""
    return {"format": CHECKPOINT_FORMAT, "architecture": model.architecture.to_dict(),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_trained_checkpoint(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
    """``trained=PATH``: open_clip's interface, its own resize + CLIP normalisation, the text model's
    tokenizer. Holds its weights, so nothing is downloaded (``allow_random`` unused)."""
    assert spec.path is not None
    model = load_trained(spec.path)
    return LoadedModel(spec, model, Preprocess(model.architecture.image_size), model.tokenizer, pretrained=True,
                       weights_file=str(spec.path))
