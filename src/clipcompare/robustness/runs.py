"""The user's points: each model of an ``evaluate`` run directory on each shift it holds.

A point's y is the model's top-1 on the shifted dataset (metrics.json); its x is its top-1 on the
run's ``imagenet`` dataset, or for ImageNet-R / -A the clean 200-class top-1 evaluate stores beside it
(``subset_top1``, see :mod:`clipcompare.evaluation.subsets`). A point without an x keeps its y and
says why. Models keep the names metrics.json uses; run.json says which ran with random weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipcompare.errors import UserError
from clipcompare.robustness.reference import SHIFTS, published_row


@dataclass
class RunPoint:
    """One model on one shift, in percent; ``id_top1`` None (with ``reason``) when the run has no x for it."""

    model: str
    shift: str
    ood_top1: float
    id_top1: float | None
    run: str
    random_weights: bool = False
    reason: str | None = None


@dataclass
class RunData:
    """What one evaluate run contributes: its models' ImageNet top-1 and their shift points."""

    path: Path
    models: list[str]
    random_weights: list[str]
    imagenet: dict[str, float] = field(default_factory=dict)  # model -> ImageNet top-1 (percent)
    points: list[RunPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    published: dict[str, str] = field(default_factory=dict)  # model -> its reference row (timm:X at its size)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def is_evaluate_run(path: Path) -> bool:
    """run.json with evaluate's settings (a train run.json has ``kind: train``)."""
    if not (path / "run.json").is_file():
        return False
    try:
        info = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "settings" in info and info.get("kind") != "train"


def expand_runs(paths: Sequence[Path]) -> list[Path]:
    """Each path, or the evaluate runs directly inside it (``runs/demo`` stands for its runs)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and not (path / "run.json").exists():
            inner = [p for p in sorted(path.iterdir()) if p.is_dir() and is_evaluate_run(p)]
            if inner:
                out += inner
                continue
        out.append(path)
    return out


def read_run(path: Path, as_kinds: dict[str, str] | None = None) -> RunData:
    """A finished evaluate run's points; a one-line :class:`UserError` when ``path`` is not one.

    ``as_kinds`` maps dataset names to the kind they stand in for (the demo's ``photo`` folder for
    ``imagenet``, its Canny ``sketch`` renditions for ``imagenet-sketch``); the run's notes say so.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory")
    if not is_evaluate_run(path):
        raise UserError(f"{path} is not an evaluate run directory (no evaluate run.json); give the --out of "
                        "`clipcompare evaluate`")
    info = _read_json(path / "run.json")
    if info.get("status") != "complete" or not (path / "metrics.json").is_file():
        raise UserError(f"{path}: the evaluate run is still in progress or was interrupted (status "
                        f"{info.get('status')!r}); let it finish, or run the same command again to complete it")
    metrics = _read_json(path / "metrics.json")
    random = [m["name"] for m in info.get("models", []) if not m.get("pretrained", True)]
    datasets: dict[str, Any] = metrics.get("datasets", {})
    by_kind: dict[str, dict[str, Any]] = {}
    for name, entry in datasets.items():  # the first dataset of each kind
        # a CLIP_benchmark copy (wds_imagenet-r) counts as the kind it stands for
        by_kind.setdefault((as_kinds or {}).get(name, entry.get("stands_for") or entry.get("kind")), entry)
    models = list(dict.fromkeys(m for e in datasets.values() for m in e.get("models", {})))
    run = RunData(path, models, random)
    crops = {m.get("name"): (m.get("build") or {}).get("crop") for m in info.get("models", []) if isinstance(m, dict)}
    for model in models:
        crop = crops.get(model)
        row = published_row(model, crop if isinstance(crop, int) else None)
        if row is not None:
            run.published[model] = row
    run.notes += [f"{path}: its dataset {name!r} stands in for {kind}" for name, kind in (as_kinds or {}).items()
                  if name in datasets]
    base = by_kind.get("imagenet", {}).get("models", {})
    run.imagenet = {m: 100.0 * v["top1"] for m, v in base.items() if v.get("top1") is not None}
    for shift in SHIFTS:
        entry = by_kind.get(shift)
        if entry is None:
            continue
        for model, values in entry.get("models", {}).items():
            if values.get("top1") is None:
                continue
            x, reason = _id_top1(model, shift, base, bool(by_kind.get("imagenet")))
            run.points.append(RunPoint(model, shift, 100.0 * values["top1"], x, str(path), model in random, reason))
    if not run.points and not run.imagenet:
        raise UserError(f"{path}: the run holds none of imagenet, {', '.join(SHIFTS)}; "
                        "nothing to place on the robustness map")
    if run.points and not run.imagenet:
        run.notes.append(f"{path}: no imagenet dataset, so its shift points have no ImageNet accuracy (x) and no "
                         "effective robustness; evaluate imagenet too")
    return run


def _id_top1(model: str, shift: str, base: dict[str, Any], has_imagenet: bool) -> tuple[float | None, str | None]:
    """The point's x (percent) or None and the reason."""
    if not has_imagenet:
        return None, "the run has no imagenet dataset, so no ImageNet accuracy to place it by"
    values = base.get(model)
    if values is None or values.get("top1") is None:
        return None, f"{model} was not evaluated on the run's imagenet dataset"
    if not SHIFTS[shift].clean:
        return 100.0 * values["top1"], None
    sub = (values.get("subset_top1") or {}).get(shift)
    if sub is None:
        return None, ("the run's ImageNet metrics predate the 200-class x-axis; evaluate imagenet again into a "
                      "new --out")
    if sub.get("top1") is None:
        return None, sub.get("reason") or f"no ImageNet val image of the 200 {SHIFTS[shift].label} classes"
    return 100.0 * sub["top1"], None
