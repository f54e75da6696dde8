"""``explain(...)``: every image through every model, a map per pair, written whole; returns a dict.

Per model: its own preprocessing, batched maps of its top-1 class (or ``--class``, or with boxes the
true class, as the pointing game asks), and the maps mapped back onto the original pixels
(:mod:`.geometry`). Batch by batch, per image: a side-by-side PNG and an ``.npz`` of the maps (on the
model input and on the original image); at the end ``explain.json``. Every file is written to a temporary name and
renamed, so an interrupted run leaves whole files only.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from clipcompare.fileio import atomic_path, atomic_write_bytes, make_dirs
from clipcompare.models.build_info import BuildInfo
from clipcompare.models.classifier import Classifier, ClipClassifier
from clipcompare.rundir import EXPLAIN_RESULT

log = logging.getLogger(__name__)

BATCH = 16  # images per forward + backward
RESULT_FILE = EXPLAIN_RESULT


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


def ready_models(classifiers: Sequence[Classifier], classes: ClassSet, layer: str | None,
                 notes: list[str], where: str = "") -> list[ExplainModel]:
    """ExplainModels of the classifiers that can score ``classes``; each other one skipped with a note in
    ``notes`` (prefixed ``where: ``)."""
    models = []
    for clf in classifiers:
        reason = clf.supports(classes)
        if reason:
            notes.append(f"{where}: skipped {clf.name}: {reason}" if where else f"skipped {clf.name}: {reason}")
        else:
            models.append(explain_model(clf, classes, layer))
    return models


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
    that class (the pointing game's protocol); else each model's top-1. Streamed: each batch's maps are
    computed, its images' PNG and npz written, and only the small per-image records kept, so a failure
    in a later batch keeps the files of the earlier ones and memory does not grow with the image count.
    """
    truth = [_true_class(b) for b in boxes] if boxes is not None else [None] * len(items)
    job = _Job(models, classes, [target if target is not None else t for t in truth], truth, boxes,
               "--class" if target is not None else None)
    if method == "scorecam":
        batch_size = 1  # ScoreCAM masks the input with each channel: C copies of each image at once
    if out is not None:
        make_dirs(out / "maps")
    images_out = []
    for start in range(0, len(items), batch_size):
        chunk = range(start, min(start + batch_size, len(items)))
        per_model = [_batch_maps(model, [items[i].image for i in chunk], [job.targets[i] for i in chunk], method)
                     for model in models]
        for j, i in enumerate(chunk):
            entry, arrays, panels, true_boxes = job.image_record(i, items[i], [(m[j], p[j]) for m, p in per_model])
            if out is not None:
                _write_image(out, _stem(i, items[i].path), entry, arrays, [m.name for m in models],
                             (items[i].image, panels, true_boxes) if write_figures else None)
            images_out.append(entry)
    result = job.summary(method, images_out, extra)
    if out is not None:
        atomic_write_bytes(out / RESULT_FILE, (json.dumps(result, indent=2, default=str) + "\n").encode("utf-8"))
    return result


def _batch_maps(model: ExplainModel, images: Sequence[Image.Image], targets: Sequence[int | None],
                method: str) -> tuple[np.ndarray, torch.Tensor]:
    """One batch through one model: its maps on the model input and its class probabilities."""
    batch = torch.stack([model.preprocess(im) for im in images]).float()
    maps, logits = compute_maps(model.logits, model.layer, [batch], targets, method=method, device=model.device)
    return maps, logits.softmax(dim=-1)


@dataclass
class _Job:
    """What every image's record needs, and the pointing-game tallies kept across batches."""

    models: Sequence[ExplainModel]
    classes: ClassSet
    targets: list[int | None]
    truth: list[int | None]
    boxes: Sequence[Sequence[Box]] | None
    forced: str | None  # "--class" when one class is explained for every image
    hits: dict[str, list[bool]] = field(default_factory=dict)
    energies: dict[str, list[float | None]] = field(default_factory=dict)

    def image_record(self, i: int, item: ImageItem, per_model: Sequence[tuple[np.ndarray, torch.Tensor]]
                     ) -> tuple[dict[str, Any], dict[str, np.ndarray], list[Panel], list[Box]]:
        """Image i's entry of explain.json, its arrays for the npz, its figure's panels and the boxes drawn."""
        width, height = item.image.size
        wanted = self.targets[i]  # only the boxes of the class explained count (all when the file names none)
        true_boxes = [b for b in (self.boxes[i] if self.boxes is not None else [])
                      if b.class_index is None or wanted is None or b.class_index == wanted]
        entry: dict[str, Any] = {"path": str(item.path), "width": width, "height": height}
        if item.key is not None:
            entry.update(dataset=item.dataset, key=item.key)
        if self.boxes is not None:
            entry["true_class"] = self.classes.names[self.truth[i]] if self.truth[i] is not None else None
            entry["boxes"] = [b.to_list() for b in self.boxes[i]]
        arrays: dict[str, np.ndarray] = {}
        panels = []
        entry["models"] = {}
        for k, (model, (input_map, probs)) in enumerate(zip(self.models, per_model)):
            record, original, panel = self.model_record(i, model, input_map, probs, (width, height), true_boxes)
            entry["models"][model.name] = {**record, "map_key": f"model{k}"}
            arrays[f"model{k}"] = original.astype(np.float16)
            arrays[f"model{k}_input"] = input_map
            panels.append(panel)
        return entry, arrays, panels, true_boxes

    def model_record(self, i: int, model: ExplainModel, input_map: np.ndarray, probs: torch.Tensor,
                     size: tuple[int, int], true_boxes: list[Box]) -> tuple[dict[str, Any], np.ndarray, Panel]:
        """One model on image i: its record, its map on the original pixels and its overlay panel."""
        geo = geometry_for(model, *size, input_map.shape)
        original = geo.to_original(input_map)
        top_point, input_point = peak(original), peak(input_map)
        top = int(probs.argmax())
        explained = self.targets[i] if self.targets[i] is not None else top
        record: dict[str, Any] = {
            "top1": self.classes.names[top], "top1_probability": float(probs[top]),
            "class": self.classes.names[explained], "class_index": explained, "probability": float(probs[explained]),
            "target": self.forced or ("true class" if self.truth[i] is not None else "top-1"),
            "peak": list(top_point) if top_point else None,
            "peak_input": list(input_point) if input_point else None, "geometry": geo.to_dict(),
        }
        if self.boxes is not None and true_boxes:
            hit = top_point is not None and point_hits(*top_point, true_boxes)
            energy = energy_inside(original, true_boxes)
            self.hits.setdefault(model.name, []).append(hit)
            self.energies.setdefault(model.name, []).append(energy)
            record.update(pointing_hit=hit, energy_in_boxes=energy)
        title = f"{model.name}\n{self.classes.names[top]} {_percent(float(probs[top]))}"
        if explained != top:
            title += f"\nmap: {self.classes.names[explained]}"
        return record, original, Panel(title, original, geo.visible_mask(), top_point)

    def summary(self, method: str, images: list[dict[str, Any]], extra: dict[str, Any] | None) -> dict[str, Any]:
        """What explain.json holds: the job's settings, the models, the image records, the pointing game."""
        # a true class of index 0 counts: `any(truth)` would not see it
        has_truth = any(t is not None for t in self.truth)
        return {
            "method": method,
            "classes": len(self.classes),
            "target": self.forced or ("true class (boxes)" if has_truth else "top-1"),
            "models": [{"name": m.name, "head": m.head, "pretrained": m.pretrained, "layer": m.layer.to_dict(),
                        "preprocess": m.build.preprocess_text() if m.build is not None else "plain resize"}
                       for m in self.models],
            "images": images,
            "pointing": ({m.name: summarise(self.hits.get(m.name, []), self.energies.get(m.name, []))
                          for m in self.models} if self.boxes is not None else None),
            "tolerance_px": TOLERANCE_PX,
            **(extra or {}),
        }


def _write_image(out: Path, stem: str, entry: dict[str, Any], arrays: dict[str, np.ndarray], names: list[str],
                 figure: tuple[Image.Image, list[Panel], list[Box]] | None) -> None:
    """One image's npz (and side-by-side PNG when ``figure``), each written whole; their names into ``entry``."""
    entry["maps"] = f"maps/{stem}.npz"
    _write_npz(out / entry["maps"], arrays, names)
    if figure is not None:
        image, panels, true_boxes = figure
        entry["png"] = f"{stem}.png"
        atomic_write_bytes(out / entry["png"], side_by_side_png(image, Path(entry["path"]).name, panels, true_boxes))


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
