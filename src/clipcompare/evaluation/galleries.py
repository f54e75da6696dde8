"""The report's galleries of an evaluate run: images only one of two models gets right.

The choice is seeded and bounded (:func:`pick_gallery`), so ``report`` and ``explain --run`` pick the
very same images from the same run directory.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipcompare.classes import ClassSet
from clipcompare.data.base import DatasetSpec, ImageDataset
from clipcompare.errors import UserError
from clipcompare.evaluation.metrics import top_column, top_matrix
from clipcompare.rundir import GALLERY_PER_CLASS, GALLERY_SEED, GALLERY_TOTAL

__all__ = ["GALLERY_PER_CLASS", "GALLERY_SEED", "GALLERY_TOTAL", "DatasetGallery", "RunDataset", "gallery_images",
           "dataset_of_run", "pick_gallery"]

log = logging.getLogger(__name__)


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
class RunDataset:
    """One dataset of an evaluate run, rebuilt from run.json's entry on first use, so its images open as
    evaluate read them (a ``wds=`` sample from its tar shard, ObjectNet's border cropped) and its classes
    keep their groups and templates. When it cannot be rebuilt (its files moved), an image is the file
    ``root / key`` and the classes are the predictions' (``fallback``)."""

    name: str
    root: Path
    spec: DatasetSpec | None = None
    limit_per_class: int | None = None
    _built: list[ImageDataset | None] = field(default_factory=list, repr=False)  # [] until first use

    def dataset(self) -> ImageDataset | None:
        if not self._built:
            self._built.append(self._build())
        return self._built[0]

    def _build(self) -> ImageDataset | None:
        from clipcompare.data.registry import build_dataset

        if self.spec is None:
            return None
        try:  # (the objectnet builder also takes the images/ folder run.json records as the root)
            ds = build_dataset(DatasetSpec(self.spec.kind, self.spec.root, self.spec.option, self.name),
                               self.limit_per_class)
        except (UserError, OSError) as exc:  # a moved dataset leaves its tiles without images, not a failure
            reason: object = exc
        else:
            if ds.root.resolve() == self.root.resolve():
                return ds
            reason = f"it now reads from {ds.root}"
        log.warning("dataset %s (%s) cannot be read again (%s); opening its images as files under %s",
                    self.name, self.spec.display, reason, self.root)
        return None

    def open(self, key: str) -> Any:
        """The image stored under ``key`` in the predictions, as a PIL image (raises when it cannot be read)."""
        from clipcompare.data.decode import load_rgb

        ds = self.dataset()
        return ds.open_image(key) if ds is not None else load_rgb(self.root / key)

    def classes(self, fallback: ClassSet) -> ClassSet:
        """The dataset's own ClassSet (groups, templates) when it has the same names as ``fallback``."""
        ds = self.dataset()
        return ds.classes if ds is not None and ds.classes.names == fallback.names else fallback


def dataset_of_run(run_dir: Path, name: str, root: Path | None = None) -> RunDataset:
    """Dataset ``name`` of the evaluate run in ``run_dir``, from its run.json entry (kind, root, option)."""
    try:
        run = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        run = {}
    entry = next((d for d in run.get("datasets", []) if isinstance(d, dict) and d.get("name") == name), None)
    root = Path(entry["root"]) if entry and entry.get("root") else Path(root or "")
    spec = DatasetSpec(entry["kind"], root, entry.get("option"), name) if entry and entry.get("kind") else None
    return RunDataset(name, root, spec, (run.get("settings") or {}).get("limit_per_class"))


@dataclass
class DatasetGallery:
    """One dataset's gallery images: (key as stored, file, true class index), the union over model pairs."""

    name: str
    root: Path
    classes: list[str]
    imagenet_indices: list[int] | None
    source: RunDataset  # where its images and classes come from (the files under root, when it cannot be rebuilt)
    items: list[tuple[str, Path, int]] = field(default_factory=list)

    def class_set(self) -> ClassSet:
        """The classes its predictions index: the run's dataset's own ClassSet, else rebuilt from the names."""
        names = ClassSet(tuple(self.classes), tuple(self.imagenet_indices) if self.imagenet_indices is not None else None)
        return self.source.classes(names)

    def open(self, key: str) -> Any:
        """The image stored under ``key``, as a PIL image."""
        return self.source.open(key)


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
                                 meta.get("imagenet_indices"), dataset_of_run(run_dir, name, entry.get("root")))
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
