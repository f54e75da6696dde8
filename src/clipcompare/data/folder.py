"""Any folder of class sub-folders, optionally renamed by a mapping file.

``--dataset folder=PATH`` uses the sub-folder names as class names; ``--dataset folder=PATH:MAPFILE``
renames them. The mapping file has one ``FOLDER<TAB>CLASS`` line per folder (a line without a tab is
split at its first whitespace; ``#`` starts a comment), or is a JSON object ``{"FOLDER": "CLASS"}``
when it ends in ``.json``. A CLASS is any name, an ImageNet wnid (``n01440764``) or an ImageNet class
name/lemma (``tench``); several folders may map to the same class. When every class is an ImageNet
class the supervised model takes part (its logits sliced to those classes); otherwise it is skipped
for this dataset and only CLIP is scored.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from clipcompare.classes import ClassSet
from clipcompare.data.base import DatasetSpec, ImageDataset, class_folders, collect_samples, few
from clipcompare.errors import UserError
from clipcompare.imagenet.classes import imagenet_index_of_label


def read_mapping(path: Path) -> dict[str, str]:
    """Folder name → class name from a TSV-ish text file or a JSON object."""
    if not path.is_file():
        raise UserError(f"class mapping file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            pairs = json.loads(text, object_pairs_hook=lambda items: items)  # sees a key given twice
        except json.JSONDecodeError as exc:
            raise UserError(f"class mapping file {path} is not valid JSON: {exc}") from None
        if not isinstance(pairs, list) or not all(isinstance(v, str) for _, v in pairs):
            raise UserError(f"class mapping file {path} must hold one JSON object of folder → class name strings")
        twice = [k for k, n in Counter(k for k, _ in pairs).items() if n > 1]
        if twice:
            raise UserError(f"class mapping file {path} lists folder {twice[0]!r} twice")
        return {str(k): v.strip() for k, v in pairs}
    mapping: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        folder, sep, label = line.partition("\t") if "\t" in line else line.strip().partition(" ")
        if not sep or not label.strip():
            raise UserError(f"{path}:{lineno}: expected 'FOLDER<TAB>CLASS', got {raw!r}")
        if folder.strip() in first_line:
            raise UserError(f"{path}:{lineno}: folder {folder.strip()!r} is listed twice (first on line "
                            f"{first_line[folder.strip()]})")
        first_line[folder.strip()] = lineno
        mapping[folder.strip()] = label.strip()
    if not mapping:
        raise UserError(f"class mapping file {path} has no entries")
    return mapping


def class_folder_dataset(spec: DatasetSpec, limit_per_class: int | None) -> ImageDataset:
    """Class names = folder names (or their mapping); ImageNet indices when they all name ImageNet classes."""
    folders = class_folders(spec.root, spec.kind)
    labels = {f: f for f in folders}
    if spec.option:
        mapping = read_mapping(Path(spec.option).expanduser())
        missing = [f for f in folders if f not in mapping]
        if missing:
            raise UserError(f"dataset {spec.kind}: class folder(s) missing from {spec.option}: {few(missing)}")
        labels = {f: mapping[f] for f in folders}
    unique = list(dict.fromkeys(labels.values()))  # first appearance order, folders sorted
    classes, target = _merge_same_class(ClassSet.from_labels(unique), unique)
    pairs = [(f, target[labels[f]]) for f in folders]
    samples = collect_samples(spec.root, spec.kind, pairs, limit_per_class)
    notes: tuple[str, ...] = ()
    if classes.imagenet_indices is None:
        notes = (f"not all classes are ImageNet classes (no unique ImageNet match for {few(_unmatched(unique))})",)
    option = str(Path(spec.option).expanduser().resolve()) if spec.option else None
    return ImageDataset(spec.name or spec.kind, spec.kind, spec.root, classes, samples, notes, option=option)


def _merge_same_class(classes: ClassSet, labels: list[str]) -> tuple[ClassSet, dict[str, int]]:
    """One class per ImageNet class: labels naming the same one (``tench``, ``n01440764``) share a target."""
    if classes.imagenet_indices is None:
        return classes, {label: k for k, label in enumerate(labels)}
    idx = classes.imagenet_indices
    distinct = list(dict.fromkeys(idx))
    position = {imagenet_index: k for k, imagenet_index in enumerate(distinct)}
    names = tuple(classes.names[idx.index(i)] for i in distinct)
    return ClassSet(names, tuple(distinct)), {label: position[i] for label, i in zip(labels, idx)}


def _unmatched(labels: list[str], n: int = 5) -> list[str]:
    """The first ``n`` labels that name no single ImageNet class, for the dataset's note."""
    out = []
    for label in labels:
        if imagenet_index_of_label(label) is None:
            out.append(label)
            if len(out) == n:
                break
    return out
