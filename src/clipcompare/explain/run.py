"""``explain(...)``: every image through every model, a map per pair, written whole; returns a dict.

Per model: its own preprocessing, batched maps of its top-1 class (or ``--class``, or with boxes the
true class, as the pointing game asks), and the maps mapped back onto the original pixels
(:mod:`.geometry`). Per image: a side-by-side PNG and an ``.npz`` of the maps (on the model input and
on the original image); at the end ``explain.json``. Every file is written to a temporary name and
renamed, so an interrupted run leaves whole files only.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from clipcompare.classes import ClassSet
from clipcompare.explain.boxes import Box
from clipcompare.explain.cam import ClassLogits, compute_maps
from clipcompare.explain.figures import Panel, side_by_side_png
from clipcompare.explain.geometry import CropGeometry
from clipcompare.explain.layers import TargetLayer, find_layer
from clipcompare.explain.pointing import TOLERANCE_PX, energy_inside, peak, point_hits, summarise
from clipcompare.fileio import atomic_path, atomic_write_bytes
from clipcompare.models.build_info import BuildInfo
from clipcompare.models.classifier import Classifier, ClipClassifier

log = logging.getLogger(__name__)

BATCH = 16  # images per forward + backward
RESULT_FILE = "explain.json"


@dataclass
class ExplainModel:
    """A model ready to explain: ``logits`` maps preprocessed images to logits over the class set."""

    name: str
    logits: nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    layer: TargetLayer
    build: BuildInfo | None = None  # its resize + crop (None: a plain resize to the input size)
    pretrained: bool = True
    head: str = "supervised"  # or "zero-shot"

    @property
    def device(self) -> torch.device:
        return next(self.logits.parameters()).device


def explain_model(classifier: Classifier, classes: ClassSet, layer: str | None = None) -> ExplainModel:
    """A loaded :class:`Classifier` restricted to ``classes``, its target layer chosen (or ``layer``)."""
    target = find_layer(classifier.model, layer, model_name=classifier.name)
    head = "zero-shot" if isinstance(classifier, ClipClassifier) else "supervised"
    return ExplainModel(classifier.name, ClassLogits(classifier, classes), classifier.preprocess, target,
                        classifier.loaded.build, classifier.pretrained, head)


@dataclass
class ImageItem:
    """An image to explain; ``key``/``dataset`` tie it to an evaluate run's predictions (``--run``)."""

    path: Path
    image: Image.Image
    key: str | None = None
    dataset: str | None = None


def _batches(model: ExplainModel, images: Sequence[Image.Image], size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), size):
        yield torch.stack([model.preprocess(im) for im in images[start:start + size]]).float()


def geometry_for(model: ExplainModel, width: int, height: int, input_shape: tuple[int, int]) -> CropGeometry:
    """The model's resize + crop for one image; a plain resize when the build does not say or disagrees."""
    if model.build is not None:
        geo = CropGeometry.from_build(height, width, model.build)
        if (geo.crop_height, geo.crop_width) == tuple(input_shape):
            return geo
        log.warning("%s: its build says a %dx%d input, its preprocessing gave %dx%d; treating it as a plain resize",
                    model.name, geo.crop_width, geo.crop_height, input_shape[1], input_shape[0])
    return CropGeometry.squash(height, width, *input_shape)


def _stem(i: int, path: Path) -> str:
    return f"{i:04d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(path).stem)[:60]}"


def explain(
    models: Sequence[ExplainModel],
    items: Sequence[ImageItem],
    classes: ClassSet,
    *,
    method: str = "gradcam",
    target: int | None = None,
    boxes: Sequence[Sequence[Box]] | None = None,
    out: Path | None = None,
    batch_size: int = BATCH,
    write_figures: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Maps of every item for every model; writes ``out`` (PNG per image, ``maps/*.npz``, explain.json)
    when given; returns what explain.json holds.

    The class explained is ``target`` (``--class``) when given; else, with ``boxes`` that name a class,
    that class (the pointing game's protocol); else each model's top-1.
    """
    n = len(items)
    truth = [_true_class(b) for b in boxes] if boxes is not None else [None] * n
    targets = [target if target is not None else t for t in truth]
    if method == "scorecam":
        batch_size = 1  # ScoreCAM masks the input with each channel: C copies of each image at once
    per_model = []
    for model in models:
        maps, logits = compute_maps(model.logits, model.layer, _batches(model, [it.image for it in items], batch_size),
                                    targets, method=method, device=model.device)
        per_model.append((maps, logits.softmax(dim=-1)))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "maps").mkdir(exist_ok=True)
    images_out = []
    hits: dict[str, list[bool]] = {m.name: [] for m in models}
    energies: dict[str, list[float | None]] = {m.name: [] for m in models}
    for i, item in enumerate(items):
        width, height = item.image.size
        wanted = targets[i]  # only the boxes of the class explained count (all when the file names none)
        true_boxes = [b for b in (boxes[i] if boxes is not None else [])
                      if b.class_index is None or wanted is None or b.class_index == wanted]
        entry: dict[str, Any] = {"path": str(item.path), "width": width, "height": height}
        if item.key is not None:
            entry.update(dataset=item.dataset, key=item.key)
        if boxes is not None:
            entry["true_class"] = classes.names[truth[i]] if truth[i] is not None else None
            entry["boxes"] = [b.to_list() for b in boxes[i]]
        arrays: dict[str, np.ndarray] = {}
        panels = []
        entry["models"] = {}
        for k, (model, (maps, probs)) in enumerate(zip(models, per_model)):
            geo = geometry_for(model, width, height, maps.shape[1:])
            original = geo.to_original(maps[i])
            top_point, input_point = peak(original), peak(maps[i])
            top = int(probs[i].argmax())
            explained = targets[i] if targets[i] is not None else top
            record: dict[str, Any] = {
                "top1": classes.names[top], "top1_probability": float(probs[i, top]),
                "class": classes.names[explained], "class_index": explained,
                "probability": float(probs[i, explained]),
                "target": "--class" if target is not None else "true class" if truth[i] is not None else "top-1",
                "peak": list(top_point) if top_point else None,
                "peak_input": list(input_point) if input_point else None, "geometry": geo.to_dict(),
                "map_key": f"model{k}",
            }
            if boxes is not None and true_boxes:
                hit = top_point is not None and point_hits(*top_point, true_boxes)
                energy = energy_inside(original, true_boxes)
                hits[model.name].append(hit)
                energies[model.name].append(energy)
                record.update(pointing_hit=hit, energy_in_boxes=energy)
            entry["models"][model.name] = record
            arrays[f"model{k}"] = original.astype(np.float16)
            arrays[f"model{k}_input"] = maps[i]
            title = f"{model.name}\n{classes.names[top]} {_percent(float(probs[i, top]))}"
            if explained != top:
                title += f"\nmap: {classes.names[explained]}"
            panels.append(Panel(title, original, geo.visible_mask(), top_point))
        if out is not None:
            stem = _stem(i, item.path)
            entry["maps"] = f"maps/{stem}.npz"
            _write_npz(out / entry["maps"], arrays, [m.name for m in models])
            if write_figures:
                entry["png"] = f"{stem}.png"
                png = side_by_side_png(item.image, Path(item.path).name, panels, true_boxes)
                atomic_write_bytes(out / entry["png"], png)
        images_out.append(entry)
    result: dict[str, Any] = {
        "method": method,
        "classes": len(classes),
        "target": "--class" if target is not None else "true class (boxes)" if any(truth) else "top-1",
        "models": [{"name": m.name, "head": m.head, "pretrained": m.pretrained, "layer": m.layer.to_dict(),
                    "preprocess": m.build.preprocess_text() if m.build is not None else "plain resize"}
                   for m in models],
        "images": images_out,
        "pointing": ({m.name: summarise(hits[m.name], energies[m.name]) for m in models}
                     if boxes is not None else None),
        "tolerance_px": TOLERANCE_PX,
        **(extra or {}),
    }
    if out is not None:
        atomic_write_bytes(out / RESULT_FILE, (json.dumps(result, indent=2, default=str) + "\n").encode("utf-8"))
    return result


def _true_class(boxes: Sequence[Box]) -> int | None:
    """An image's class by its boxes: the first box's class (None when the boxes name none)."""
    return next((b.class_index for b in boxes if b.class_index is not None), None)


def _write_npz(path: Path, arrays: dict[str, np.ndarray], names: list[str]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, models=np.array(names), **arrays)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def read_maps(out: Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """The original-pixel maps of one image of explain.json, by model name."""
    with np.load(Path(out) / entry["maps"]) as data:
        return {name: data[rec["map_key"]].astype(np.float32) for name, rec in entry["models"].items()}


def _percent(p: float) -> str:
    """A probability as the overlay's title shows it: one decimal below 10% (0.4%, not 0%)."""
    return f"{p:.1%}" if p < 0.1 else f"{p:.0%}"
