"""What a loader hands back: the model, its preprocessing and tokenizer (:class:`LoadedModel`), and
what the loader decided beyond the weights (:class:`BuildInfo`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from clipcompare.models.spec import ModelSpec

Preprocess = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class BuildInfo:
    """Everything about a build that the weights do not determine, as the loader decided it.

    Two checkpoints with equal tensors give different numbers when any of this differs (a CLIP
    text tower built with GELU instead of the QuickGELU it was trained with, a 232-pixel resize
    instead of 256), so it is logged at ``-v``, shown by ``inspect`` and stored in run.json.
    """

    architecture: str  # the open_clip config or torchvision builder that was run
    activation: str  # measured on the built model: CLIP's transformer MLPs (QuickGELU/GELU), else the CNN's
    activation_source: str  # why that activation
    logit_scale: str | None  # CLIP: where exp(logit_scale) comes from; None for a classifier head
    resize: int | list[int]  # resize target before the crop (shorter side unless resize_mode says otherwise)
    crop: int | list[int]  # centre crop fed to the model
    interpolation: str
    resize_mode: str  # shortest (resize the shorter side, then crop), squash or longest (open_clip)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess_source: str  # whose preprocessing: a pretrained tag, torchvision weights, a model config
    tokenizer: str | None = None  # a text model's tokenisation, where the loader decides it (hf: the repo's)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["tokenizer"] is None:  # absent, not null: run.json of the families without it stays as it was
            del d["tokenizer"]
        return d

    def describe(self) -> str:
        """One line for logs and ``inspect``."""
        scale = f"; logit scale: {self.logit_scale}" if self.logit_scale else ""
        text = f"; tokenizer: {self.tokenizer}" if self.tokenizer else ""
        return (f"{self.architecture}, activation {self.activation} ({self.activation_source}){scale}; "
                f"preprocess: {self.preprocess_text()}{text}")

    def preprocess_text(self) -> str:
        """``resize … crop … mean … std … (source)``, as ``describe`` and ``inspect`` show it."""
        return (f"resize {self.resize} ({self.resize_mode}, {self.interpolation}), crop {self.crop}, "
                f"mean {_floats(self.mean)}, std {_floats(self.std)} ({self.preprocess_source})")


def _floats(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def single_size(size: Any) -> int | list[int]:
    """torchvision and open_clip give sizes as an int, [n] or [h, w]; [n] means n."""
    if isinstance(size, (list, tuple)):
        return int(size[0]) if len(size) == 1 else [int(x) for x in size]
    return int(size)


def size_hw(size: Any) -> tuple[int, int]:
    """(height, width) of a size given as n, [n] or [h, w] (BuildInfo's resize and crop)."""
    value = single_size(size)
    return (value, value) if isinstance(value, int) else (value[0], value[-1])


def square_size(size: Any) -> int | list[int]:
    """A size as BuildInfo holds a square one: ``n`` for n, [n] and (n, n); else [h, w]."""
    value = single_size(size)
    return value[0] if isinstance(value, list) and len(set(value)) == 1 else value


def activation_names(module: nn.Module) -> list[str]:
    """Activation classes used in ``module``, in order of first appearance (QuickGELU, ReLU, GELU...)."""
    found: list[str] = []
    for m in module.modules():
        cls = type(m)
        is_act = (cls.__module__ == "torch.nn.modules.activation"
                  and not isinstance(m, (nn.MultiheadAttention, nn.Softmax, nn.LogSoftmax))
                  ) or cls.__name__.endswith(("GELU", "ReLU", "SiLU", "Swish"))
        if is_act and cls.__name__ not in found:
            found.append(cls.__name__)
    return found


@dataclass
class LoadedModel:
    """A model with the preprocessing that belongs to its weights (and a tokenizer for CLIP)."""

    spec: ModelSpec
    model: nn.Module
    preprocess: Preprocess
    tokenizer: Callable[..., torch.Tensor] | None = None
    pretrained: bool = True
    weights_file: str | None = None
    missing_weights: str | None = None  # the file that was needed, when random weights stand in
    build: BuildInfo | None = None  # what the loader decided beyond the weights (see BuildInfo)
