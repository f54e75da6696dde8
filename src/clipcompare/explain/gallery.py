"""``explain --run``: the images of an evaluate run's "only one model right" galleries, explained into
``RUN_DIR/explain/<dataset>/``, where the report finds them for its gallery tiles."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipcompare.classes import ClassSet
from clipcompare.errors import UserError
from clipcompare.evaluation.galleries import GALLERY_PER_CLASS, GALLERY_TOTAL, gallery_images
from clipcompare.explain.boxes import read_boxes
from clipcompare.explain.run import BATCH, ImageItem, explain, explain_model
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
    stored = run.get("settings", {}).get("models") or [m["name"] for m in run.get("models", [])]
    if not stored:
        raise UserError(f"--run {run_dir}: its run.json names no models; name them with -m")
    random = any(not m.get("pretrained", True) for m in run.get("models", []))
    return [spec_text(s) for s in stored], random, run.get("options", {}).get("templates") or "openai"


def explain_run(
    run_dir: Path,
    classifiers: Sequence[Classifier],
    *,
    out: Path | None = None,
    method: str = "gradcam",
    layer: str | None = None,
    boxes: Path | None = None,
    per_class: int = GALLERY_PER_CLASS,
    total: int = GALLERY_TOTAL,
    batch_size: int = BATCH,
) -> dict[str, Any]:
    """Explain every gallery image of ``run_dir`` (per dataset, with its classes) into ``out``
    (default ``RUN_DIR/explain``); unreadable images are skipped and counted."""
    from clipcompare.data.decode import load_rgb

    run_dir = Path(run_dir)
    read_run(run_dir)
    out = Path(out) if out is not None else run_dir / OUT_NAME
    notes: list[str] = []
    skipped: list[dict[str, str]] = []
    results: dict[str, Any] = {}
    for gallery in gallery_images(run_dir, per_class, total):
        items = []
        for key, path, _ in gallery.items:
            try:
                items.append(ImageItem(path, load_rgb(path), key=key, dataset=gallery.name))
            except Exception as exc:  # noqa: BLE001 - as evaluate: an unreadable image is skipped and counted
                log.warning("skipping unreadable image %s: %s: %s", path, type(exc).__name__, exc)
                skipped.append({"path": str(path), "reason": f"{type(exc).__name__}: {exc}"})
        if not items:
            continue
        classes = ClassSet(tuple(gallery.classes),
                           tuple(gallery.imagenet_indices) if gallery.imagenet_indices is not None else None)
        found = None
        if boxes is not None:
            try:
                found = read_boxes(boxes, [it.path for it in items], [it.image.size for it in items], classes)
            except UserError as exc:
                if "has no box for any" not in str(exc):
                    raise
        models = []
        for clf in classifiers:
            reason = clf.supports(classes)
            if reason:
                notes.append(f"{gallery.name}: skipped {clf.name}: {reason}")
            else:
                models.append(explain_model(clf, classes, layer))
        if not models:
            continue
        results[gallery.name] = explain(models, items, classes, method=method, boxes=found, out=out / gallery.name,
                                        batch_size=batch_size, extra={"run": str(run_dir), "dataset": gallery.name})
    if boxes is not None and not any(r.get("pointing") for r in results.values()):
        raise UserError(f"--boxes {boxes} has no box for any gallery image of {run_dir}")
    if not results:
        notes.append(f"the galleries of {run_dir} hold no image (none that only one model gets right): "
                     "nothing to explain")
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''} "
                     f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
    return {"run": str(run_dir), "out": str(out), "datasets": results, "notes": notes, "skipped": skipped}
