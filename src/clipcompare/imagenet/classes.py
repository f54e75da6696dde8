"""The 1000 ImageNet-1k classes in index order, read from the metadata libraries already ship.

wnids, lemmas and glosses come from timm's ``timm/data/_info`` files; CLIP's hand-edited class
names (which disambiguate e.g. the two "crane"s) come from open_clip's ``IMAGENET_CLASSNAMES``;
the ImageNet-R and ImageNet-A 200-class subsets from timm's index lists.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# The seed notebooks' 10-class comparison; all are ImageNet classes, so both model kinds take part.
SEED_LABELS: tuple[str, ...] = (
    "bald eagle", "axolotl", "common iguana", "Indian cobra", "peacock",
    "scorpion", "centipede", "black swan", "French bulldog", "leopard",
)


@dataclass(frozen=True)
class ImageNetClass:
    """One ImageNet-1k class."""

    index: int
    wnid: str
    lemmas: tuple[str, ...]
    gloss: str
    clip_name: str

    @property
    def name(self) -> str:
        """The first WordNet lemma, e.g. ``English springer``."""
        return self.lemmas[0]


def _package_dir(name: str) -> Path:
    """A package's folder, found without importing it (timm and open_clip import torch: ~4 s)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _timm_info_lines(filename: str) -> list[str]:
    text = (_package_dir("timm") / "data" / "_info" / filename).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _open_clip_classnames() -> tuple[str, ...]:
    """open_clip's IMAGENET_CLASSNAMES, read from its import-free metadata module."""
    path = _package_dir("open_clip") / "zero_shot_metadata.py"
    spec = importlib.util.spec_from_file_location("_open_clip_zero_shot_metadata", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.IMAGENET_CLASSNAMES)


def _tab_map(filename: str) -> dict[str, str]:
    out = {}
    for line in _timm_info_lines(filename):
        key, _, value = line.partition("\t")
        out[key] = value
    return out


@cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """All 1000 classes, ``imagenet_classes()[i].index == i``."""
    IMAGENET_CLASSNAMES = _open_clip_classnames()
    wnids = _timm_info_lines("imagenet_synsets.txt")
    lemmas = _tab_map("imagenet_synset_to_lemma.txt")
    glosses = _tab_map("imagenet_synset_to_definition.txt")
    if len(wnids) != 1000 or len(IMAGENET_CLASSNAMES) != 1000:
        raise RuntimeError("timm/open_clip ImageNet metadata does not have 1000 classes")
    return tuple(
        ImageNetClass(
            index=i,
            wnid=w,
            lemmas=tuple(s.strip() for s in lemmas[w].split(",")),
            gloss=glosses[w],
            clip_name=IMAGENET_CLASSNAMES[i],
        )
        for i, w in enumerate(wnids)
    )


@cache
def _wnid_to_index() -> dict[str, int]:
    return {c.wnid: c.index for c in imagenet_classes()}


def index_of_wnid(wnid: str) -> int | None:
    """Class index of an ImageNet-1k wnid, or None if it is not one of the 1000."""
    return _wnid_to_index().get(wnid)


@cache
def _label_lookup() -> dict[str, frozenset[int]]:
    """Lower-cased CLIP name or WordNet lemma → the class indices carrying it."""
    lookup: dict[str, set[int]] = {}
    for c in imagenet_classes():
        for key in {c.clip_name, *c.lemmas}:
            lookup.setdefault(key.lower(), set()).add(c.index)
    return {k: frozenset(v) for k, v in lookup.items()}


def imagenet_index_of_label(label: str) -> int | None:
    """The class a label names (wnid, CLIP name or lemma, case-insensitive); None if none or ambiguous
    (``crane`` is both a bird and a machine)."""
    wnid_idx = index_of_wnid(label)
    if wnid_idx is not None:
        return wnid_idx
    hits = _label_lookup().get(label.lower(), frozenset())
    return next(iter(hits)) if len(hits) == 1 else None


def _subset(filename: str) -> tuple[int, ...]:
    return tuple(int(x) for x in _timm_info_lines(filename))


IMAGENET_R_INDICES: tuple[int, ...] = _subset("imagenet_r_indices.txt")
IMAGENET_A_INDICES: tuple[int, ...] = _subset("imagenet_a_indices.txt")
