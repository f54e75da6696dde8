"""Dataset kinds by name, and parsing of ``--dataset KIND=PATH[:MAPFILE]``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from clipcompare.data.base import DatasetSpec, ImageDataset
from clipcompare.data.folder import class_folder_dataset
from clipcompare.data.imagenet import index_folders, wnid_folders
from clipcompare.data.objectnet import objectnet_dataset
from clipcompare.data.wds import wds_dataset
from clipcompare.errors import UserError
from clipcompare.imagenet.classes import IMAGENET_A_INDICES, IMAGENET_R_INDICES

Builder = Callable[[DatasetSpec, "int | None"], ImageDataset]

DATASET_KINDS: dict[str, Builder] = {
    "imagenet": wnid_folders,
    "imagenet-v2": index_folders,
    "imagenet-sketch": wnid_folders,
    "imagenet-r": partial(wnid_folders, indices=IMAGENET_R_INDICES, label="ImageNet-R"),
    "imagenet-a": partial(wnid_folders, indices=IMAGENET_A_INDICES, label="ImageNet-A"),
    "folder": class_folder_dataset,
    "wds": wds_dataset,
    "objectnet": objectnet_dataset,
}

# kinds whose PATH may carry a ':OPTION' suffix (folder: a mapping file; wds: the split)
_KINDS_WITH_OPTION = frozenset({"folder", "wds"})


def parse_dataset_arg(text: str) -> DatasetSpec:
    """``KIND=PATH`` (or ``folder=PATH:MAPFILE``, ``wds=PATH:SPLIT``) → :class:`DatasetSpec`; unknown kinds are a
    UserError."""
    kind, sep, rest = text.partition("=")
    kind = kind.strip()
    if not sep or not rest.strip():
        raise UserError(f"--dataset {text!r}: expected KIND=PATH with KIND one of {', '.join(DATASET_KINDS)}")
    if kind not in DATASET_KINDS:
        raise UserError(f"--dataset {text!r}: unknown kind {kind!r}; known: {', '.join(DATASET_KINDS)}")
    option = None
    path_text = rest.strip()
    if kind in _KINDS_WITH_OPTION and ":" in path_text and not Path(path_text).expanduser().exists():
        head, _, tail = path_text.rpartition(":")
        if kind != "wds" or "/" not in tail:  # hf://datasets/ORG/REPO has a ':' but no split
            path_text, option = head, tail or None
    return DatasetSpec(kind, Path(path_text).expanduser(), option)


def name_datasets(specs: Sequence[DatasetSpec]) -> list[DatasetSpec]:
    """Give each spec a unique name (its kind; ``folder-2`` for a second folder) for file names."""
    seen: dict[str, int] = {}
    named = []
    for spec in specs:
        seen[spec.kind] = seen.get(spec.kind, 0) + 1
        n = seen[spec.kind]
        name = spec.name or (spec.kind if n == 1 else f"{spec.kind}-{n}")
        named.append(DatasetSpec(spec.kind, spec.root, spec.option, name))
    return named


def build_dataset(spec: DatasetSpec, limit_per_class: int | None = None) -> ImageDataset:
    """Scan one dataset; every mismatch between folder and kind is a UserError here, before any model runs."""
    if limit_per_class is not None and limit_per_class < 1:
        raise UserError("--limit-per-class must be at least 1")
    return DATASET_KINDS[spec.kind](spec, limit_per_class)


def load_datasets(args: Sequence[str | DatasetSpec], limit_per_class: int | None = None) -> list[ImageDataset]:
    """Parse, name and scan every ``--dataset`` argument."""
    specs = [a if isinstance(a, DatasetSpec) else parse_dataset_arg(a) for a in args]
    if not specs:
        raise UserError("no --dataset given")
    return [build_dataset(s, limit_per_class) for s in name_datasets(specs)]
