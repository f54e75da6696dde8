"""torchvision classifiers: ``resnet50``, ``resnet50:IMAGENET1K_V2``, ``resnet50=FILE``.

Weights come from torch hub's cache or are downloaded by torchvision (unless downloads are off, see
:mod:`clipcompare.models.weights`); a local file is loaded strictly.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipcompare.errors import MissingWeightsError, UserError
from clipcompare.models.build_info import BuildInfo, LoadedModel, activation_names, single_size
from clipcompare.models.spec import DEFAULT_TORCHVISION_WEIGHTS, ModelSpec
from clipcompare.models.weights import fall_back_or_raise, load_strict, read_state_dict, require_network


def torchvision_weights(arch: str, tag: str | None) -> Any:
    """torchvision's weights enum member for ``arch`` (``tag``, or its DEFAULT); UserError with close names."""
    from torchvision import models

    try:
        enum = models.get_model_weights(arch)
    except (ValueError, KeyError):
        known = sorted(models.list_models(module=models))
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5) or ["resnet50", "vit_b_16"]
        raise UserError(f"unknown torchvision classification model {arch!r}; closest: {', '.join(close)}") from None
    if tag is None:
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        raise UserError(
            f"{arch} has no weights {tag!r}; available: {', '.join(w.name for w in enum)}"
        ) from None


def load_torchvision(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
    """torchvision classifier with its weights' own transforms (V1: 256→224, V2: 232→224).

    A local file (``resnet50=FILE``) gets the transforms of IMAGENET1K_V1 unless the spec names
    the weights it holds (``resnet50:IMAGENET1K_V2=FILE``).
    """
    from torchvision import models

    weights = torchvision_weights(spec.arch, spec.tag or (DEFAULT_TORCHVISION_WEIGHTS if spec.path else None))
    model = models.get_model(spec.arch, weights=None)
    preprocess = weights.transforms()
    build = _build_info(spec, model, weights, preprocess)
    if spec.path is not None:
        state = read_state_dict(spec.path)
        load_strict(model, state, spec.path)
        return LoadedModel(spec, model, preprocess, pretrained=True, weights_file=str(spec.path), build=build)
    filename = os.path.basename(weights.url)
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    try:
        if not target.is_file():
            require_network(weights.url)
        state = weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # no cache and no network: any download error means the same to the user
        err = MissingWeightsError(
            f"weights for {spec.name} not found: need {filename} (from {weights.url}); "
            f"put it at {target} or pass {spec.arch}=/path/{filename} (or --weights PATH)",
            filename,
        )
        fall_back_or_raise(err, allow_random, exc)
        return LoadedModel(spec, model, preprocess, pretrained=False, missing_weights=filename, build=build)
    model.load_state_dict(state)
    return LoadedModel(spec, model, preprocess, pretrained=True, weights_file=str(target), build=build)


def _build_info(spec: ModelSpec, model: nn.Module, weights: Any, preprocess: Any) -> BuildInfo:
    """A torchvision build: the architecture fixes the activation, the weights enum the transforms."""
    chosen = ", the default for a local file" if spec.path is not None and spec.tag is None else ""
    return BuildInfo(
        architecture=f"torchvision {spec.arch}",
        activation=", ".join(activation_names(model)) or "none",
        activation_source=f"fixed by torchvision's {spec.arch}",
        logit_scale=None,
        resize=single_size(preprocess.resize_size), crop=single_size(preprocess.crop_size),
        interpolation=preprocess.interpolation.value, resize_mode="shortest",
        mean=tuple(preprocess.mean), std=tuple(preprocess.std),
        preprocess_source=f"{weights.__class__.__name__}.{weights.name} transforms{chosen}",
    )
