"""The 1000 ImageNet-1k classes in index order, read from the metadata libraries already ship.

wnids, lemmas and glosses come from timm's ``timm/data/_info`` files; CLIP's hand-edited class
names (which disambiguate e.g. the two "crane"s) come from open_clip's ``IMAGENET_CLASSNAMES``;
the ImageNet-R and ImageNet-A 200-class subsets from timm's index lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources


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


def _timm_info_lines(filename: str) -> list[str]:
    text = resources.files("timm.data").joinpath("_info", filename).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _tab_map(filename: str) -> dict[str, str]:
    out = {}
    for line in _timm_info_lines(filename):
        key, _, value = line.partition("\t")
        out[key] = value
    return out


@cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """All 1000 classes, ``imagenet_classes()[i].index == i``."""
    from open_clip import IMAGENET_CLASSNAMES

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


def _subset(filename: str) -> tuple[int, ...]:
    return tuple(int(x) for x in _timm_info_lines(filename))


IMAGENET_R_INDICES: tuple[int, ...] = _subset("imagenet_r_indices.txt")
IMAGENET_A_INDICES: tuple[int, ...] = _subset("imagenet_a_indices.txt")
