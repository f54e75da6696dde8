"""An ``evaluate`` run directory (run.json, metrics.json, predictions/) as a report section.

Accuracy table and top-1 bars across datasets; per dataset: calibration (reliability diagram, ECE),
mistake severity in WordNet, most confused pairs, and per pair of models the per-class scatter, the
classes each wins by most and galleries of images only one of them gets right.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from clipcompare.evaluation.galleries import RunDataset, dataset_of_run, pick_gallery
from clipcompare.evaluation.metrics import (
    expected_calibration_error,
    prob_column,
    reliability_bins,
    top_column,
    top_matrix,
    unique_names,
)
from clipcompare.report import plots
from clipcompare.report.blocks import (
    Cell,
    Figure,
    Gallery,
    Heading,
    MapThumb,
    Prediction,
    ReportOptions,
    Section,
    Table,
    Text,
    Tile,
    num,
    pct,
    read_json,
    run_label,
    thumbnail,
)
from clipcompare.rundir import EXPLAIN_DIR, EXPLAIN_RESULT

log = logging.getLogger(__name__)

CAPTION_TOP = 3  # predictions shown under a thumbnail


def is_run(path: Path) -> bool:
    return (path / "run.json").is_file() and (path / "metrics.json").is_file() and (path / "predictions").is_dir()


def build(run_dir: Path, options: ReportOptions) -> Section:
    """The section for one evaluate run."""
    run = read_json(run_dir / "run.json")
    metrics = read_json(run_dir / "metrics.json")
    datasets: dict[str, Any] = metrics.get("datasets", {})
    models = [m["name"] for m in run.get("models", [])]
    section = Section(
        "evaluate", f"evaluate: {run_label(run_dir)}", str(run_dir),
        random_weights=[m["name"] for m in run.get("models", []) if not m.get("pretrained", True)],
        facts=[("models", ", ".join(models)),
               ("datasets", ", ".join(f"{n} ({d.get('n_files', '?')} images)" for n, d in datasets.items())),
               ("device", str(run.get("options", {}).get("device", "?"))),
               ("templates", str(run.get("options", {}).get("templates", "?"))),
               ("run", f"{run.get('start_time', '?')} → {run.get('end_time') or 'unfinished'} "
                       f"({run.get('status', '?')})")],
    )
    section.blocks.append(accuracy_table(datasets))
    top1 = {(d, m): r.get("top1") for d, entry in datasets.items() for m, r in entry.get("models", {}).items()}
    if top1:
        section.blocks.append(Figure("top-1 across datasets", plots.top1_bars(list(datasets), models, top1)))
    for name, entry in datasets.items():
        section.blocks.append(Heading(f"{name}", 3))
        for note in entry.get("notes", []):
            section.blocks.append(Text(f"note: {note}"))
        path = run_dir / "predictions" / f"{name}.parquet"
        if not path.is_file() or not entry.get("models"):
            section.blocks.append(Text("no predictions stored for this dataset"))
            continue
        section.blocks += dataset_blocks(name, entry, path, options)
    return section


def accuracy_table(datasets: dict[str, Any]) -> Table:
    """One row per dataset and model, the numbers of metrics.json."""
    rows = []
    for name, entry in datasets.items():
        skipped = entry.get("skipped", {}).get("count", 0)
        for model, m in entry.get("models", {}).items():
            rows.append([Cell(name), Cell(model), pct(m.get("top1")), pct(m.get("top5")), pct(m.get("mean_per_class")),
                         num(m.get("mean_wordnet_distance_wrong")), num(m.get("n"), ","), num(skipped, ",")])
    return Table("accuracy", ["dataset", "model", "top-1 %", "top-5 %", "mean per-class %",
                              "WordNet distance of mistakes", "images", "skipped"], rows,
                 [False, False] + [True] * 6, role="accuracy",
                 note="WordNet distance: mean tree distance (edges) between true and predicted class over wrong top-1 "
                      "predictions; smaller means nearer misses.")


# --------------------------------------------------------------------------- one dataset


def read_predictions(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The predictions and the metadata evaluate stored with them (classes, ImageNet indices, models)."""
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"clipcompare", b"{}"))
    return table.to_pandas(), meta


def dataset_blocks(name: str, entry: dict[str, Any], path: Path, options: ReportOptions) -> list:
    df, meta = read_predictions(path)
    models = [m for m in entry["models"] if top_column(m) in df.columns]
    indices = meta.get("imagenet_indices")
    names = unique_names(meta.get("classes", []), indices)
    targets = df["target"].to_numpy(dtype=np.int64)
    tops = {m: top_matrix(df, m) for m in models}
    probs = {m: _prob_matrix(df, m) for m in models}
    blocks: list = []
    blocks += calibration_blocks(targets, tops, probs)
    if indices is not None:
        blocks += severity_blocks(targets, tops, indices)
    blocks.append(confusion_table(entry, models, options.listed))
    source = dataset_of_run(path.parent.parent, name, entry.get("root"))  # opens its images as evaluate did
    result, explained = explained_images(path.parent.parent / EXPLAIN_DIR / name)
    if result is not None:
        from clipcompare.report.sections.explain import pointing_table

        table = pointing_table(result, "pointing game of the gallery images (explain --run)")
        if table is not None:
            blocks.append(table)
    for comparison in entry.get("comparisons", []):
        a, b = comparison["models"]
        if a in tops and b in tops:
            blocks += pair_blocks(comparison, entry, df, names, targets, tops, probs, source, options, explained)
    return blocks


def explained_images(folder: Path) -> tuple[dict[str, Any] | None, dict[str, tuple[Path, dict[str, Any]]]]:
    """``explain --run``'s explain.json of one dataset (None when not explained), read once, and its images by
    their key: (its output folder, its explain.json entry)."""
    if not (folder / EXPLAIN_RESULT).is_file():
        return None, {}
    result = read_json(folder / EXPLAIN_RESULT)
    return result, {e["key"]: (folder, e) for e in result.get("images", [])
                    if e.get("key") is not None and e.get("maps")}


def map_thumbs(explained: tuple[Path, dict[str, Any]] | None, source: RunDataset, key: str, models: Sequence[str],
               options: ReportOptions) -> list[MapThumb]:
    """Each of ``models``' map over the image (explain --run), as thumbnails; [] when not explained."""
    if explained is None:
        return []
    from clipcompare.explain.figures import overlay_jpeg
    from clipcompare.explain.geometry import CropGeometry
    from clipcompare.explain.run import read_maps

    folder, entry = explained
    try:
        maps = read_maps(folder, entry)
        image = source.open(key)
    except Exception as exc:  # noqa: BLE001 - a moved image or map leaves the tile without maps, not a failed report
        log.warning("no maps for %s: %s", source.root / key, exc)
        return []
    thumbs = []
    for m in models:
        rec = entry["models"].get(m)
        if rec is None or m not in maps:
            continue
        geo = CropGeometry.from_dict(entry["width"], entry["height"], rec["geometry"])
        thumbs.append(MapThumb(m, overlay_jpeg(image, maps[m], geo.visible_mask(), options.thumb_px,
                                               options.thumb_quality), f"{rec['class']} {100 * rec['probability']:.0f}%"))
    return thumbs


def _prob_matrix(df: pd.DataFrame, model: str) -> np.ndarray:
    col = df[prob_column(model)]
    return np.stack(col.to_numpy()).astype(np.float64) if len(col) else np.zeros((0, 1))


def calibration_blocks(targets: np.ndarray, tops: dict[str, np.ndarray], probs: dict[str, np.ndarray]) -> list:
    bins, ece, rows = {}, {}, []
    for m in tops:
        conf = probs[m][:, 0]
        correct = tops[m][:, 0] == targets
        bins[m] = reliability_bins(conf, correct)
        ece[m] = expected_calibration_error(conf, correct)
        rows.append([Cell(m), num(ece[m], ".4f"), pct(float(conf.mean()) if len(conf) else None),
                     pct(float(correct.mean()) if len(correct) else None)])
    return [
        Table("calibration of the top-1 probability", ["model", "ECE", "mean top-1 probability %", "top-1 %"], rows,
              [False, True, True, True], role="calibration",
              note="ECE: expected calibration error over 15 equal-width confidence bins, "
                   "Σ (bin images / images) · |accuracy − mean confidence|."),
        Figure("reliability diagram", plots.reliability_diagram(bins, ece),
               "bars: accuracy per confidence bin; a calibrated model's bars reach the dashed diagonal"),
    ]


def severity_blocks(targets: np.ndarray, tops: dict[str, np.ndarray], indices: Sequence[int]) -> list:
    from clipcompare.imagenet.wordnet import class_distance_matrix

    dist = np.asarray(class_distance_matrix())
    im = np.asarray(indices, dtype=np.int64)
    per_model = {}
    for m, top in tops.items():
        wrong = top[:, 0] != targets
        per_model[m] = dist[im[targets[wrong]], im[top[wrong, 0]]]
    if not any(len(d) for d in per_model.values()):
        return []
    return [Figure("mistake severity", plots.severity_histogram(per_model),
                   "how far in the WordNet tree each wrong top-1 answer is from the true class: 2 is a sibling "
                   "(one terrier for another), 10+ is another branch (a dog called a truck)")]


def confusion_table(entry: dict[str, Any], models: Sequence[str], listed: int) -> Table:
    rows = []
    for m in models:
        for pair in entry["models"][m].get("confused_pairs", [])[:listed]:
            rows.append([Cell(m), Cell(pair["true"]), Cell(pair["predicted"]), num(pair["count"], ",")])
    return Table("most confused pairs", ["model", "true class", "predicted as", "images"], rows,
                 [False, False, False, True], role="confused")


# --------------------------------------------------------------------------- two models


def pair_blocks(comparison: dict[str, Any], entry: dict[str, Any], df: pd.DataFrame, names: Sequence[str],
                targets: np.ndarray, tops: dict[str, np.ndarray], probs: dict[str, np.ndarray],
                source: RunDataset, options: ReportOptions, explained: dict[str, tuple[Path, dict[str, Any]]] | None = None) -> list:
    a, b = comparison["models"]
    blocks: list = [Heading(f"{a} vs {b}", 4)]
    per_a, per_b = entry["models"][a]["per_class"], entry["models"][b]["per_class"]
    shared = [c for c in per_a if c in per_b]
    if shared:
        blocks.append(Figure(
            f"per-class top-1: {a} vs {b}",
            plots.per_class_scatter(a, b, shared, np.array([per_a[c]["top1"] for c in shared]),
                                    np.array([per_b[c]["top1"] for c in shared]), options.labelled_classes),
            "one point per class; the classes furthest from the diagonal are named"))
    rows = []
    for winner, loser in ((a, b), (b, a)):
        for c in comparison["better_classes"][winner]["classes"][: options.listed]:
            rows.append([Cell(winner), Cell(c["class"]), pct(c["top1"], 1), pct(c["other_top1"], 1),
                         pct(c["top1"] - c["other_top1"], 1), num(c["n"], ",")])
    wins = {m: comparison["better_classes"][m]["count"] for m in (a, b)}
    blocks.append(Table(f"classes each model wins by most ({a} better in {wins[a]}, {b} in {wins[b]})",
                        ["better model", "class", "its top-1 %", "other's top-1 %", "margin (points)", "images"], rows,
                        [False, False, True, True, True, True], role="wins"))
    blocks.append(Text(f"both right: {comparison['both_right']:,}; both wrong: {comparison['both_wrong']:,}; "
                       f"only {a}: {comparison['only_right'][a]['count']:,}; "
                       f"only {b}: {comparison['only_right'][b]['count']:,}"))
    right = {m: tops[m][:, 0] == targets for m in (a, b)}
    for m, other in ((a, b), (b, a)):
        only = np.flatnonzero(right[m] & ~right[other])
        chosen = pick_gallery(only, targets, options.gallery_per_class, options.gallery_total, options.seed)
        tiles = [_tile(df, i, names, targets, tops, probs, (a, b), source, options) for i in chosen]
        for tile in tiles:
            tile.maps = map_thumbs((explained or {}).get(tile.path), source, tile.path, (a, b), options)
        note = (f"{len(chosen)} of {len(only):,} images (a fixed random choice, at most "
                f"{options.gallery_per_class} per class)" if len(chosen) < len(only)
                else f"all {len(only):,} images" if len(only) else "")
        blocks.append(Gallery(f"only {m} right", tiles, role=f"only:{m}", note=note))
    return blocks


def _tile(df: pd.DataFrame, i: int, names: Sequence[str], targets: np.ndarray, tops: dict[str, np.ndarray],
          probs: dict[str, np.ndarray], models: Sequence[str], source: RunDataset, options: ReportOptions) -> Tile:
    path = str(df["path"].iat[i])
    jpeg, missing = thumbnail(source.root / path, options, lambda: source.open(path))
    preds = {
        m: [Prediction(names[c], float(p), bool(c == targets[i]))
            for c, p in zip(tops[m][i, :CAPTION_TOP], probs[m][i, :CAPTION_TOP])]
        for m in models
    }
    return Tile(path, jpeg, names[targets[i]], preds, missing=missing)
