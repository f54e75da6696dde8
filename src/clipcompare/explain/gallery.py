"""``explain --run``: the images of an evaluate run's "only one model right" galleries, explained into
``RUN_DIR/explain/<dataset>/``, where the report finds them for its gallery tiles.

:func:`plan_run` reads everything a user can get wrong (the run, its images, the boxes) before any model
is loaded; :func:`explain_run` then explains each dataset's gallery images with that dataset's classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipcompare.classes import ClassSet
from clipcompare.classify import skipped_note
from clipcompare.errors import UserError
from clipcompare.evaluation.galleries import GALLERY_PER_CLASS, GALLERY_TOTAL, DatasetGallery, gallery_images
from clipcompare.explain.boxes import Box, NoBoxMatch, read_boxes
from clipcompare.explain.run import BATCH, ImageItem, explain, ready_models
from clipcompare.models.classifier import Classifier
from clipcompare.rundir import EXPLAIN_DIR

log = logging.getLogger(__name__)

OUT_NAME = EXPLAIN_DIR  # RUN_DIR/explain/<dataset>/explain.json


def read_run(run_dir: Path) -> dict[str, Any]:
    import json

    path = Path(run_dir) / "run.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"--run {run_dir}: not an evaluate run directory (cannot read run.json: {exc})") from None


def spec_text(stored: str) -> str:
    """A spec as run.json's settings store it (``NAME (absolute path)`` for a local file) → typable again."""
    if stored.endswith(")") and " (" in stored:
        name, _, path = stored[:-1].partition(" (")
        return f"{name.rpartition('=')[0]}={path}"
    return stored


def run_models(run_dir: Path) -> tuple[list[str], bool, str]:
    """The run's model specs, whether any ran with random weights, and its prompt templates."""
    run = read_run(run_dir)
    if not (Path(run_dir) / "metrics.json").is_file():
        raise UserError(f"--run {run_dir}: the evaluate run is unfinished (no metrics.json); run the same "
                        "evaluate command again to complete it")
    models = run.get("models", [])
    if models and all(m.get("spec") for m in models):
        specs = [m["spec"] for m in models]  # what loads each model again, absolute paths (hf: folders too)
    else:  # a run directory from before "spec" was recorded
        specs = [spec_text(s) for s in run.get("settings", {}).get("models") or [m["name"] for m in models]]
    if not specs:
        raise UserError(f"--run {run_dir}: its run.json names no models; name them with -m")
    random = any(not m.get("pretrained", True) for m in models)
    return specs, random, run.get("options", {}).get("templates") or "openai"


@dataclass
class GalleryJob:
    """One dataset's gallery images, read, with its classes and (with --boxes) each image's boxes."""

    name: str
    classes: ClassSet
    items: list[ImageItem]
    boxes: list[list[Box]] | None = None


@dataclass
class RunPlan:
    """What ``explain --run`` will explain, all read before any model loads; unreadable images counted."""

    run_dir: Path
    jobs: list[GalleryJob]
    skipped: list[dict[str, str]] = field(default_factory=list)


def plan_run(run_dir: Path, *, boxes: Path | None = None, per_class: int = GALLERY_PER_CLASS,
             total: int = GALLERY_TOTAL) -> RunPlan:
    """Every gallery image of ``run_dir``, read as evaluate read it (its dataset rebuilt from run.json), with
    the dataset's own classes; ``boxes`` read for them. A boxes file with no box for any gallery image is a
    UserError here, before any model is loaded."""
    run_dir = Path(run_dir)
    read_run(run_dir)
    plan = RunPlan(run_dir, [])
    for gallery in gallery_images(run_dir, per_class, total):
        items = _read_items(gallery, plan.skipped)
        if not items:
            continue
        job = GalleryJob(gallery.name, gallery.class_set(), items)
        if boxes is not None:
            try:
                job.boxes = read_boxes(boxes, [it.path for it in items], [it.image.size for it in items], job.classes)
            except NoBoxMatch:
                job.boxes = None  # another dataset's images may have boxes
        plan.jobs.append(job)
    if boxes is not None and not any(job.boxes for job in plan.jobs):
        raise UserError(f"--boxes {boxes} has no box for any gallery image of {run_dir}; it does not match the run")
    return plan


def _read_items(gallery: DatasetGallery, skipped: list[dict[str, str]]) -> list[ImageItem]:
    items = []
    for key, path, _ in gallery.items:
        try:
            items.append(ImageItem(path, gallery.open(key), key=key, dataset=gallery.name))
        except Exception as exc:  # noqa: BLE001 - as evaluate: an unreadable image is skipped and counted
            log.warning("skipping unreadable image %s: %s: %s", path, type(exc).__name__, exc)
            skipped.append({"path": str(path), "reason": f"{type(exc).__name__}: {exc}"})
    return items


def explain_run(
    plan: RunPlan,
    classifiers: Sequence[Classifier],
    *,
    out: Path | None = None,
    method: str = "gradcam",
    layer: str | None = None,
    batch_size: int = BATCH,
) -> dict[str, Any]:
    """Explain every gallery image of ``plan`` (per dataset, with its classes) into ``out``
    (default ``RUN_DIR/explain``)."""
    out = Path(out) if out is not None else plan.run_dir / OUT_NAME
    notes: list[str] = []
    results: dict[str, Any] = {}
    for job in plan.jobs:
        models = ready_models(classifiers, job.classes, layer, notes, job.name)
        if models:
            results[job.name] = explain(models, job.items, job.classes, method=method, boxes=job.boxes,
                                        out=out / job.name, batch_size=batch_size,
                                        extra={"run": str(plan.run_dir), "dataset": job.name})
    if not plan.jobs:
        notes.append(f"the galleries of {plan.run_dir} hold no image (none that only one model gets right): "
                     "nothing to explain")
    if plan.skipped:
        notes.append(skipped_note([(s["path"], s["reason"]) for s in plan.skipped]))
    return {"run": str(plan.run_dir), "out": str(out), "datasets": results, "notes": notes, "skipped": plan.skipped}
