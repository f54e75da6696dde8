"""The 200-class x-axis of ImageNet-R / -A effective robustness, computed on ImageNet val.

ImageNet-R and -A score only 200 classes, so their in-distribution counterpart is top-1 on the
ImageNet val images of those 200 classes *with the scores restricted to them* (Hendrycks et al.;
timm's ``results-imagenet-{r,a}-clean.csv``). That cannot be recomputed from a stored top-5 over
1000 classes, so while predicting a 1000-class ``imagenet`` dataset every model's argmax over each
subset's columns is stored too (:func:`subset_column`, an index into the dataset's classes), and
metrics.json gets ``subset_top1`` per model. For CLIP the restricted 1000-class head is the 200-class
head: each column is built from its own class's prompts alone.

numpy only, like :mod:`clipcompare.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from clipcompare.imagenet.classes import IMAGENET_A_INDICES, IMAGENET_R_INDICES

SUBSETS: dict[str, tuple[int, ...]] = {"imagenet-r": IMAGENET_R_INDICES, "imagenet-a": IMAGENET_A_INDICES}
# the predictions of a run started before these columns existed (or partly predicted then)
MISSING_REASON = ("its ImageNet predictions were stored without the 200-class argmax (evaluate before "
                  "this version); evaluate imagenet again into a new --out")


def subset_column(model: str, subset: str) -> str:
    """Column holding a model's argmax over ``subset``'s classes (an index into the dataset's classes)."""
    return f"top1@{subset}[{model}]"


def subset_positions(kind: str, imagenet_indices: Sequence[int] | None) -> dict[str, np.ndarray]:
    """For an ``imagenet`` dataset: each subset's class positions in the dataset's class list; else {}."""
    if kind != "imagenet" or not imagenet_indices:
        return {}
    where = {int(i): p for p, i in enumerate(imagenet_indices)}
    return {name: np.array([where[i] for i in idx], dtype=np.int64)
            for name, idx in SUBSETS.items() if all(i in where for i in idx)}


def subset_top1(targets: np.ndarray, predicted: np.ndarray, positions: np.ndarray) -> dict[str, Any]:
    """Top-1 (fraction) over the images whose class is in the subset; ``predicted``: restricted argmax."""
    targets = np.asarray(targets, dtype=np.int64)
    keep = np.isin(targets, positions)
    n = int(keep.sum())
    return {"top1": float((np.asarray(predicted)[keep] == targets[keep]).mean()) if n else None, "n": n}


def subset_metrics(df: pd.DataFrame, models: Sequence[str], positions: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per model, per subset: ``{"top1", "n"}``, or ``{"top1": None, "reason": ...}`` when not stored."""
    targets = df["target"].to_numpy(dtype=np.int64)
    out: dict[str, Any] = {}
    for model in models:
        entry: dict[str, Any] = {}
        for subset, pos in positions.items():
            column = subset_column(model, subset)
            if column not in df.columns or df[column].isna().any():
                entry[subset] = {"top1": None, "n": 0, "reason": MISSING_REASON}
            else:
                entry[subset] = subset_top1(targets, df[column].to_numpy(dtype=np.int64), pos)
        out[model] = entry
    return out
