"""The classes being scored: what datasets produce and classifiers score against.

Task- and model-free, so that ``data/`` names its classes without importing ``models/`` (or torch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from clipcompare.errors import UserError
from clipcompare.imagenet.classes import imagenet_classes, imagenet_index_of_label, index_of_wnid


@dataclass(frozen=True)
class ClassSet:
    """The classes being scored: display/prompt names, plus ImageNet indices when they are ImageNet classes."""

    names: tuple[str, ...]
    imagenet_indices: tuple[int, ...] | None = None
    # classes that each stand for several ImageNet classes (ObjectNet's 113): a supervised model
    # scores a class by its best logit among the group; None when each class is one ImageNet class
    imagenet_groups: tuple[tuple[int, ...], ...] | None = None
    # the dataset's own prompt templates (CLIP_benchmark's zeroshot_classification_templates.txt),
    # used under ``--templates dataset``
    templates: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.imagenet_indices is not None and len(self.imagenet_indices) != len(self.names):
            raise ValueError("imagenet_indices must match names one to one")
        if self.imagenet_groups is not None and (
                len(self.imagenet_groups) != len(self.names) or not all(self.imagenet_groups)):
            raise ValueError("imagenet_groups must give each class a non-empty group")

    @property
    def imagenet_scorable(self) -> bool:
        """Whether a 1000-way ImageNet classifier can score these classes (by index or by group)."""
        return self.imagenet_indices is not None or self.imagenet_groups is not None

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def imagenet(cls, indices: Sequence[int] | None = None) -> "ClassSet":
        """ImageNet classes (all 1000, or a subset such as ImageNet-R's 200) with CLIP's edited names."""
        classes = imagenet_classes()
        idx = tuple(range(1000)) if indices is None else tuple(int(i) for i in indices)
        return cls(tuple(classes[i].clip_name for i in idx), idx)

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> "ClassSet":
        """User labels; mapped to ImageNet indices when every label names an ImageNet class.

        A label matches a class by wnid, CLIP's class name, or a WordNet lemma (case-insensitive);
        a lemma shared by two classes (``crane``) is ambiguous and does not map.
        """
        classes = imagenet_classes()
        names = tuple(label.strip() for label in labels if label.strip())
        if not names:
            raise UserError("no labels given")
        indices: list[int] = []
        for name in names:
            index = imagenet_index_of_label(name)
            if index is None:
                return cls(names, None)
            indices.append(index)
        # wnids are not good prompts: show and prompt with CLIP's class name instead
        shown = tuple(classes[i].clip_name if index_of_wnid(n) is not None else n for n, i in zip(names, indices))
        return cls(shown, tuple(indices))

    @property
    def key(self) -> str:
        """Stable identity for caching."""
        blob = "\n".join(self.names) + "|" + ",".join(map(str, self.imagenet_indices or ()))
        # only when set, so the keys (and resumable run directories) of plain class sets stay as they were
        if self.imagenet_groups is not None:
            blob += "|groups:" + ";".join(",".join(map(str, g)) for g in self.imagenet_groups)
        if self.templates is not None:
            blob += "|templates:" + "\n".join(self.templates)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
