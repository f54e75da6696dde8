"""The report's galleries of an evaluate run: images only one of two models gets right.

The choice is seeded and bounded (:func:`pick_gallery`), so ``report`` and ``explain --run`` pick the
very same images from the same run directory.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipcompare.errors import UserError
from clipcompare.evaluation.metrics import top_column, top_matrix
from clipcompare.rundir import GALLERY_PER_CLASS, GALLERY_SEED, GALLERY_TOTAL

__all__ = ["GALLERY_PER_CLASS", "GALLERY_SEED", "GALLERY_TOTAL", "DatasetGallery", "gallery_images", "pick_gallery"]


def pick_gallery(candidates: np.ndarray, targets: np.ndarray, per_class: int, total: int, seed: int) -> np.ndarray:
    """A seeded choice of at most ``per_class`` rows per true class and ``total`` in all, in dataset order."""
    order = np.random.default_rng(seed).permutation(np.asarray(candidates, dtype=np.int64))
    taken: Counter[int] = Counter()
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= total:
            break
        t = int(targets[i])
        if taken[t] < per_class:
            taken[t] += 1
            chosen.append(int(i))
    return np.sort(np.asarray(chosen, dtype=np.int64))


@dataclass
class DatasetGallery:
    """One dataset's gallery images: (key as stored, file, true class index), the union over model pairs."""

    name: str
    root: Path
    classes: list[str]
    imagenet_indices: list[int] | None
    items: list[tuple[str, Path, int]] = field(default_factory=list)


def gallery_images(run_dir: Path, per_class: int = GALLERY_PER_CLASS, total: int = GALLERY_TOTAL,
                   seed: int = GALLERY_SEED) -> list[DatasetGallery]:
    """Every image the report's "only X right" galleries of ``run_dir`` show, per dataset."""
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"--run {run_dir}: not a finished evaluate run (cannot read metrics.json: {exc})") from None
    out = []
    for name, entry in metrics.get("datasets", {}).items():
        path = run_dir / "predictions" / f"{name}.parquet"
        if not path.is_file():
            continue
        table = pq.read_table(path)
        meta: dict[str, Any] = json.loads((table.schema.metadata or {}).get(b"clipcompare", b"{}"))
        df = table.to_pandas()
        targets = df["target"].to_numpy(dtype=np.int64)
        gallery = DatasetGallery(name, Path(entry.get("root", "")), list(meta.get("classes", [])),
                                 meta.get("imagenet_indices"))
        chosen: set[int] = set()
        for comparison in entry.get("comparisons", []):
            a, b = comparison["models"]
            if top_column(a) not in df.columns or top_column(b) not in df.columns:
                continue
            right = {m: top_matrix(df, m)[:, 0] == targets for m in (a, b)}
            for m, other in ((a, b), (b, a)):
                only = np.flatnonzero(right[m] & ~right[other])
                chosen.update(int(i) for i in pick_gallery(only, targets, per_class, total, seed))
        for i in sorted(chosen):
            key = str(df["path"].iat[i])
            gallery.items.append((key, gallery.root / key, int(targets[i])))
        out.append(gallery)
    return out
