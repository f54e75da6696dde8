"""Accuracy metrics from stored predictions: pure functions, numpy/pandas in, plain dicts out.

Predictions are one row per image with ``path``, ``target`` (index into the dataset's classes) and,
per model, the top-k class indices (:func:`top_column`) and their probabilities (:func:`prob_column`),
best first. Nothing here imports torch, so metrics can be recomputed from a run directory alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

TOP_K = 5
N_LISTED = 10  # classes / pairs listed in "most misclassified", "confused pairs", "beats"
N_EXAMPLES = 5  # example paths for "only one model is right"


def top_column(model: str) -> str:
    """Column holding a model's top-k predicted class indices."""
    return f"top5[{model}]"


def prob_column(model: str) -> str:
    """Column holding the softmax probabilities of those top-k classes."""
    return f"prob5[{model}]"


def models_in(df: pd.DataFrame) -> list[str]:
    """Model names that have prediction columns in ``df``, in column order."""
    return [c[len("top5[") : -1] for c in df.columns if c.startswith("top5[") and c.endswith("]")]


def top_matrix(df: pd.DataFrame, model: str) -> np.ndarray:
    """A model's top-k predictions as an int array ``[N, k]``."""
    col = df[top_column(model)]
    if len(col) == 0:
        return np.zeros((0, TOP_K), dtype=np.int64)
    return np.stack(col.to_numpy()).astype(np.int64)


# --------------------------------------------------------------------------- one model


def _as_2d(top: np.ndarray) -> np.ndarray:
    """Top-k as ``[N, k]`` ints (a plain top-1 vector becomes ``[N, 1]``)."""
    top = np.asarray(top, dtype=np.int64)
    return top[:, None] if top.ndim == 1 else top


def per_class_counts(targets: np.ndarray, correct: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and correct top-1 predictions per class."""
    counts = np.bincount(targets, minlength=n_classes)
    hits = np.bincount(targets, weights=correct.astype(np.float64), minlength=n_classes).astype(np.int64)
    return counts, hits


def most_misclassified(
    counts: np.ndarray, hits: np.ndarray, names: Sequence[str], n: int = N_LISTED
) -> list[dict[str, Any]]:
    """Classes with the most wrong top-1 predictions (ties: higher error rate, then name)."""
    wrong = counts - hits
    rows = [(int(w), int(c), names[i]) for i, (w, c) in enumerate(zip(wrong, counts)) if w > 0]
    rows.sort(key=lambda r: (-r[0], -r[0] / r[1], r[2]))
    return [
        {"class": name, "wrong": w, "total": c, "text": f"{name}: {w}/{c} misclassified"} for w, c, name in rows[:n]
    ]


def confused_pairs(
    targets: np.ndarray, predicted: np.ndarray, names: Sequence[str], n: int = N_LISTED
) -> list[dict[str, Any]]:
    """The most frequent (true → predicted) pairs among wrong top-1 predictions."""
    wrong = targets != predicted
    if not wrong.any():
        return []
    n_classes = len(names)
    codes, freq = np.unique(targets[wrong] * n_classes + predicted[wrong], return_counts=True)
    rows = [(int(f), names[c // n_classes], names[c % n_classes]) for c, f in zip(codes, freq)]
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    return [{"true": t, "predicted": p, "count": f} for f, t, p in rows[:n]]


def mean_wordnet_distance(
    targets: np.ndarray, predicted: np.ndarray, imagenet_indices: Sequence[int], distances: np.ndarray
) -> float | None:
    """Mean WordNet tree distance between true and predicted class over wrong predictions."""
    wrong = targets != predicted
    if not wrong.any():
        return None
    im = np.asarray(imagenet_indices, dtype=np.int64)
    return float(distances[im[targets[wrong]], im[predicted[wrong]]].mean())


def model_metrics(
    targets: np.ndarray,
    top: np.ndarray,
    names: Sequence[str],
    imagenet_indices: Sequence[int] | None = None,
    distances: np.ndarray | None = None,
) -> dict[str, Any]:
    """top-1, top-5, mean per-class accuracy, per-class accuracy, worst classes, confusions, WordNet distance."""
    targets = np.asarray(targets, dtype=np.int64)
    top = _as_2d(top)
    n = len(targets)
    predicted = top[:, 0] if n else np.zeros(0, dtype=np.int64)
    correct = predicted == targets
    counts, hits = per_class_counts(targets, correct, len(names))
    present = counts > 0
    out: dict[str, Any] = {
        "n": n,
        "top1": float(correct.mean()) if n else None,
        "top5": float((top == targets[:, None]).any(axis=1).mean()) if n else None,
        "mean_per_class": float((hits[present] / counts[present]).mean()) if n else None,
        "per_class": {
            names[i]: {"n": int(counts[i]), "correct": int(hits[i]), "top1": float(hits[i] / counts[i])}
            for i in np.flatnonzero(present)
        },
        "most_misclassified": most_misclassified(counts, hits, names),
        "confused_pairs": confused_pairs(targets, predicted, names),
        "mean_wordnet_distance_wrong": None,
    }
    if imagenet_indices is not None and distances is not None:
        out["mean_wordnet_distance_wrong"] = mean_wordnet_distance(targets, predicted, imagenet_indices, distances)
    return out


# --------------------------------------------------------------------------- two models


def compare_models(
    a: str, b: str, paths: Sequence[str], targets: np.ndarray, top_a: np.ndarray, top_b: np.ndarray,
    names: Sequence[str],
) -> dict[str, Any]:
    """Classes where each model beats the other, and images only one of them gets right."""
    targets = np.asarray(targets, dtype=np.int64)
    right_a = _as_2d(top_a)[:, 0] == targets
    right_b = _as_2d(top_b)[:, 0] == targets
    counts, hits_a = per_class_counts(targets, right_a, len(names))
    _, hits_b = per_class_counts(targets, right_b, len(names))
    paths = list(paths)
    return {
        "models": [a, b],
        "better_classes": {
            a: _beats(counts, hits_a, hits_b, names),
            b: _beats(counts, hits_b, hits_a, names),
        },
        "only_right": {
            a: _only(right_a & ~right_b, paths),
            b: _only(right_b & ~right_a, paths),
        },
        "both_right": int((right_a & right_b).sum()),
        "both_wrong": int((~right_a & ~right_b).sum()),
    }


def _beats(counts: np.ndarray, hits: np.ndarray, other: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    present = np.flatnonzero(counts > 0)
    margin = (hits[present] - other[present]) / counts[present]
    rows = [(float(m), names[i], i) for m, i in zip(margin, present) if m > 0]
    rows.sort(key=lambda r: (-r[0], r[1]))
    return {
        "count": len(rows),
        "classes": [
            {"class": name, "top1": float(hits[i] / counts[i]), "other_top1": float(other[i] / counts[i]),
             "n": int(counts[i])}
            for _, name, i in rows[:N_LISTED]
        ],
    }


def _only(mask: np.ndarray, paths: list[str]) -> dict[str, Any]:
    idx = np.flatnonzero(mask)
    return {"count": int(len(idx)), "examples": [paths[i] for i in idx[:N_EXAMPLES]]}


# --------------------------------------------------------------------------- a dataset


def unique_names(names: Sequence[str], imagenet_indices: Sequence[int] | None = None) -> list[str]:
    """Class names usable as keys: a repeated name gets its ImageNet index (or position) appended.

    CLIP's ImageNet names repeat two ("missile" for 657 and 744, "sunglasses" for 836 and 837), which
    would otherwise merge two classes in per-class results.
    """
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    ids = list(imagenet_indices) if imagenet_indices is not None else list(range(len(names)))
    return [n if counts[n] == 1 else f"{n} [{i}]" for n, i in zip(names, ids)]


def dataset_metrics(
    df: pd.DataFrame,
    names: Sequence[str],
    imagenet_indices: Sequence[int] | None = None,
    *,
    models: Sequence[str] | None = None,
    distances: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per-model metrics and pairwise comparisons for one dataset's predictions.

    ``distances`` is the WordNet distance matrix over ImageNet indices; when None and the classes are
    ImageNet classes it is :func:`clipcompare.imagenet.wordnet.class_distance_matrix` (cached).
    """
    models = list(models) if models is not None else models_in(df)
    names = unique_names(names, imagenet_indices)
    targets = df["target"].to_numpy(dtype=np.int64)
    if distances is None and imagenet_indices is not None:
        from clipcompare.imagenet.wordnet import class_distance_matrix  # numpy only, like this module

        distances = np.asarray(class_distance_matrix())
    tops = {m: top_matrix(df, m) for m in models}
    out: dict[str, Any] = {
        "n_images": int(len(df)),
        "models": {m: model_metrics(targets, tops[m], names, imagenet_indices, distances) for m in models},
        "comparisons": [
            compare_models(a, b, df["path"].tolist(), targets, tops[a], tops[b], names)
            for a, b in combinations(models, 2)
        ],
    }
    return out


# --------------------------------------------------------------------------- calibration

ECE_BINS = 15  # Guo et al. 2017 "On Calibration of Modern Neural Networks"; timm/torchmetrics default too


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Equal-width confidence bins ``(lo, hi]`` over [0, 1]: images, mean confidence and accuracy per bin.

    A confidence of exactly 0 goes into the first bin. Empty bins have ``None`` confidence and accuracy.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") puts conf in (edges[i-1], edges[i]] at i: the standard right-closed bins
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    hit_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins)
    return {
        "edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count)],
        "accuracy": [float(h / c) if c else None for h, c in zip(hit_sum, count)],
    }


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float | None:
    """ECE: Σ_b (n_b / N) · |accuracy_b − mean confidence_b| over equal-width bins; None for no images."""
    bins = reliability_bins(confidence, correct, n_bins)
    total = sum(bins["count"])
    if total == 0:
        return None
    filled = [(n, a, c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"]) if n]
    return float(sum(n / total * abs(a - c) for n, a, c in filled))
