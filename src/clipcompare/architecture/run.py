"""``clipcompare inspect``: measure each model's image tower, diff every pair of ResNet-style towers.

For CLIP models the *image tower* (``model.visual``) is what is compared with a supervised
classifier; the text side's parameter count is reported separately.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from clipcompare.architecture.counts import LayerCounts, count_layers, count_params
from clipcompare.architecture.diff import StructuralDiff, diff_resnets
from clipcompare.architecture.flops import FLOPS_NOTE
from clipcompare.architecture.resnet import ResNetSummary, resnet_summary
from clipcompare.architecture.stages import Stage, measure_stages
from clipcompare.architecture.tree import as_int
from clipcompare.architecture.vit import ViTSummary, vit_summary
from clipcompare.models.build_info import LoadedModel
from clipcompare.models.loading import load_model
from clipcompare.models.spec import ModelSpec
from clipcompare.models.towers import image_tower

log = logging.getLogger(__name__)


@dataclass
class ModelInspection:
    """Everything measured for one model."""

    name: str
    family: str
    architecture: str
    pretrained: bool
    weights: str
    image_size: int
    params_image: int
    params_text: int | None
    params_total: int
    flops: int
    stages: list[Stage]
    layers: LayerCounts
    resnet: ResNetSummary | None = None
    vit: ViTSummary | None = None
    build: dict[str, Any] | None = None  # LoadedModel.build: activation, logit scale, preprocessing


@dataclass
class InspectReport:
    """The result of ``clipcompare inspect``."""

    models: list[ModelInspection]
    diffs: list[StructuralDiff]
    flops_note: str = FLOPS_NOTE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _native_image_size(loaded: LoadedModel) -> int:
    """The input size the tower was built for: CLIP's ``visual.image_size``; a timm model's evaluation crop
    (its test size); else 224."""
    size = getattr(image_tower(loaded.model), "image_size", None)
    if size is None and loaded.spec.family == "timm" and loaded.build is not None:
        size = loaded.build.crop
    return as_int(size) if size is not None else 224


def weights_note(loaded: LoadedModel) -> str:
    """``pretrained (file)`` or ``random init (file not found)``."""
    if loaded.pretrained:
        return f"pretrained ({os.path.basename(loaded.weights_file)})" if loaded.weights_file else "pretrained"
    missing = loaded.missing_weights
    return f"random init ({missing} not found)" if missing else "random init (no pretrained weights)"


def inspect_loaded(loaded: LoadedModel, image_size: int | None = None) -> ModelInspection:
    """Measure one loaded model (its image tower for CLIP) at ``image_size`` (default: native)."""
    size = image_size or _native_image_size(loaded)
    tower = image_tower(loaded.model)
    stages, flops = measure_stages(tower, size)
    params_total = count_params(loaded.model)
    params_image = count_params(tower)
    is_clip = tower is not loaded.model
    cls = type(tower)
    origin = cls.__module__.split(".")[0]
    return ModelInspection(
        name=loaded.spec.name,
        family=loaded.spec.family,
        architecture=f"{origin} {cls.__name__}" + (" (image tower)" if is_clip else ""),
        pretrained=loaded.pretrained,
        weights=weights_note(loaded),
        image_size=size,
        params_image=params_image,
        params_text=params_total - params_image if is_clip else None,
        params_total=params_total,
        flops=flops,
        stages=stages,
        layers=count_layers(tower, flops),
        resnet=resnet_summary(tower),
        vit=vit_summary(tower),
        build=loaded.build.to_dict() if loaded.build is not None else None,
    )


def build_report(models: Sequence[ModelSpec | LoadedModel], image_size: int | None = None) -> InspectReport:
    """Inspect each model (specs are loaded with random init when weights are missing) and diff
    every pair of ResNet-style towers."""
    inspections = []
    for item in models:
        loaded = item if isinstance(item, LoadedModel) else load_model(item, allow_random=True)
        log.info("inspecting %s", loaded.spec.name)
        inspections.append(inspect_loaded(loaded, image_size))
    resnets = [m for m in inspections if m.resnet is not None]
    diffs = [diff_resnets(a, b) for i, a in enumerate(resnets) for b in resnets[i + 1:]]
    return InspectReport(inspections, diffs)


def inspect_models(models: Sequence[ModelSpec | LoadedModel], image_size: int | None = None) -> dict[str, Any]:
    """:func:`build_report` as a JSON-ready dict."""
    return build_report(models, image_size).to_dict()
