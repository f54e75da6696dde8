"""The WordNet 3.0 hypernym hierarchy above the 1000 ImageNet-1k classes.

Read from the package's ``data/wordnet_imagenet.json.gz`` (built by ``scripts/build_wordnet.py``):
1,860 synsets, every ancestor of the classes through hypernym and instance-hypernym links. It is a
DAG, not a tree (304 classes have more than one path to ``entity.n.01``), so the definitions are:

* ``up(a, c)``: the fewest hypernym edges from ``a`` up to its ancestor ``c`` (``up(a, a) == 0``).
* ``tree_distance(a, b)``: ``min over common ancestors c of up(a, c) + up(b, c)``, i.e. the number
  of edges a -> c -> b, minimised over paths.
* ``lowest_common_ancestor(a, b)``: the common ancestor that attains that minimum; ties go to the
  deepest one (longest path from the root), then to the smallest wnid. So
  ``tree_distance(a, lca) + tree_distance(lca, b) == tree_distance(a, b)`` always holds. (Taking
  the deepest common ancestor outright, as NLTK's ``lowest_common_hypernyms`` does, breaks that for
  about 3% of class pairs: tench and Shih-Tzu share vertebrate.n.01, the deepest, but are fewer
  edges apart through animal.n.01, which the dog reaches via domestic_animal.n.01.)

Anything that takes a synset accepts a :class:`Synset`, a wnid (``n02102040``), a class index
(``217`` or ``"217"``), an NLTK-style name (``dog.n.01``), a CLIP class name or a WordNet lemma
(case-insensitive). Unknown or ambiguous names raise :class:`~clipcompare.errors.UserError`.
"""

from __future__ import annotations

import difflib
import gzip
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Union

import numpy as np

from clipcompare.errors import UserError

DATA_FILE = "wordnet_imagenet.json.gz"
ROOT = "n00001740"  # entity.n.01
_WNID_RE = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class Synset:
    """One WordNet noun synset of the hierarchy."""

    wnid: str
    name: str  # NLTK-style, e.g. "dog.n.01"
    lemmas: tuple[str, ...]
    gloss: str
    parents: tuple[str, ...]  # wnids of the direct hypernyms
    index: int | None = None  # ImageNet-1k class index, None for non-class synsets

    @property
    def is_class(self) -> bool:
        """Whether this synset is one of the 1000 ImageNet classes."""
        return self.index is not None

    def __str__(self) -> str:
        return f"{self.wnid} {self.name}"


SynsetLike = Union[Synset, str, int]


def _normalize(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


class _Hierarchy:
    """Everything precomputed once from the data file: the synsets, upward distances, depths."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.classes: tuple[str, ...] = tuple(raw["classes"])
        class_index = {w: i for i, w in enumerate(self.classes)}
        self.synsets: dict[str, Synset] = {
            w: Synset(w, s["name"], tuple(s["lemmas"]), s["gloss"], tuple(s["parents"]), class_index.get(w))
            for w, s in sorted(raw["synsets"].items())
        }
        self.by_name = {s.name: s.wnid for s in self.synsets.values()}
        kids: dict[str, list[str]] = {w: [] for w in self.synsets}
        for s in self.synsets.values():
            for p in s.parents:
                kids[p].append(s.wnid)
        self.children = {w: tuple(sorted(c, key=lambda k: self.synsets[k].name)) for w, c in kids.items()}
        # ancestor -> fewest edges up, per synset (self included at 0); parents come first
        self.up: dict[str, dict[str, int]] = {}
        self.max_depth: dict[str, int] = {}
        for w in self.synsets:
            self._fill(w)
        self.class_count: dict[str, int] = dict.fromkeys(self.synsets, 0)
        for w in self.classes:
            for a in self.up[w]:
                self.class_count[a] += 1

    def _fill(self, wnid: str) -> None:
        # iterative post-order so deep chains cannot hit the recursion limit
        stack = [wnid]
        while stack:
            w = stack[-1]
            if w in self.up:
                stack.pop()
                continue
            missing = [p for p in self.synsets[w].parents if p not in self.up]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            up = {w: 0}
            for p in self.synsets[w].parents:
                for a, d in self.up[p].items():
                    if d + 1 < up.get(a, 1 << 30):
                        up[a] = d + 1
            self.up[w] = up
            self.max_depth[w] = max((self.max_depth[p] + 1 for p in self.synsets[w].parents), default=0)


@cache
def _hierarchy() -> _Hierarchy:
    blob = resources.files("clipcompare.imagenet").joinpath("data", DATA_FILE).read_bytes()
    return _Hierarchy(json.loads(gzip.decompress(blob)))


@cache
def _name_index() -> dict[str, tuple[str, ...]]:
    """Normalised lemma -> wnids carrying it (several for e.g. "crane")."""
    out: dict[str, set[str]] = {}
    for s in _hierarchy().synsets.values():
        for lemma in s.lemmas:
            out.setdefault(_normalize(lemma), set()).add(s.wnid)
    return {k: tuple(sorted(v)) for k, v in out.items()}


@cache
def _clip_names() -> dict[str, tuple[str, ...]]:
    """Normalised CLIP class name -> wnids (open_clip repeats two: "missile", "sunglasses")."""
    from clipcompare.imagenet.classes import imagenet_classes

    out: dict[str, list[str]] = {}
    for c in imagenet_classes():
        out.setdefault(_normalize(c.clip_name), []).append(c.wnid)
    return {k: tuple(v) for k, v in out.items()}


def all_synsets() -> tuple[Synset, ...]:
    """Every synset of the hierarchy, sorted by wnid."""
    return tuple(_hierarchy().synsets.values())


def class_synsets() -> tuple[Synset, ...]:
    """The 1000 class synsets in class-index order."""
    h = _hierarchy()
    return tuple(h.synsets[w] for w in h.classes)


def _suggest(query: str) -> str:
    h = _hierarchy()
    keys: Iterable[str] = [*h.synsets, *h.by_name, *_name_index(), *_clip_names()]
    close = difflib.get_close_matches(_normalize(query), sorted(set(keys)), n=5, cutoff=0.6)
    return f"; closest: {', '.join(close)}" if close else ""


def _describe(s: Synset) -> str:
    return f"{s.wnid} ({s.name}, class {s.index})" if s.is_class else f"{s.wnid} ({s.name})"


def synset(x: SynsetLike) -> Synset:
    """Resolve a wnid, class index, ``dog.n.01`` name, CLIP class name or lemma to its synset."""
    h = _hierarchy()
    if isinstance(x, Synset):
        return h.synsets[x.wnid]
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        if not 0 <= x < len(h.classes):
            raise UserError(f"class index {x} is out of range 0-{len(h.classes) - 1}")
        return h.synsets[h.classes[x]]
    if not isinstance(x, str):
        raise TypeError(f"expected a Synset, str or int, got {type(x).__name__}")
    text = x.strip()
    if text.isdigit():
        return synset(int(text))
    if _WNID_RE.match(text.lower()):
        if text.lower() in h.synsets:
            return h.synsets[text.lower()]
        raise UserError(f"{text} is not an ImageNet-1k class or one of their ancestors{_suggest(text)}")
    if text.lower() in h.by_name:  # NLTK names are all lowercase
        return h.synsets[h.by_name[text.lower()]]
    key = _normalize(text)
    # CLIP names come first: they are the project's class names and mostly disambiguate ("crane bird")
    wnids = _clip_names().get(key) or _name_index().get(key, ())
    if len(wnids) == 1:
        return h.synsets[wnids[0]]
    if wnids:
        options = ", ".join(_describe(h.synsets[w]) for w in wnids)
        raise UserError(f"{text!r} is ambiguous: it names {options}; use a wnid or class index")
    raise UserError(f"unknown synset or class {text!r}{_suggest(text)}")


def children(x: SynsetLike) -> tuple[Synset, ...]:
    """Direct hyponyms of ``x`` inside the hierarchy, sorted by name."""
    h = _hierarchy()
    return tuple(h.synsets[c] for c in h.children[synset(x).wnid])


def hypernym_paths(x: SynsetLike) -> list[list[Synset]]:
    """Every path from ``entity.n.01`` down to ``x`` (inclusive), in a fixed order."""
    h = _hierarchy()

    def paths(w: str) -> list[list[str]]:
        parents = h.synsets[w].parents
        if not parents:
            return [[w]]
        return [p + [w] for parent in parents for p in paths(parent)]

    return [[h.synsets[w] for w in p] for p in paths(synset(x).wnid)]


def depth(x: SynsetLike) -> int:
    """Fewest edges from the root down to ``x``."""
    return _hierarchy().up[synset(x).wnid][ROOT]


def _common(a: str, b: str) -> list[tuple[int, int, str]]:
    h = _hierarchy()
    ua, ub = h.up[a], h.up[b]
    return [(ua[c] + ub[c], -h.max_depth[c], c) for c in ua.keys() & ub.keys()]


def lowest_common_ancestor(a: SynsetLike, b: SynsetLike) -> Synset:
    """The common ancestor minimising ``up(a, c) + up(b, c)``; ties: deepest, then smallest wnid."""
    return _hierarchy().synsets[min(_common(synset(a).wnid, synset(b).wnid))[2]]


def tree_distance(a: SynsetLike, b: SynsetLike) -> int:
    """Edges a -> common ancestor -> b, minimised over ancestors and paths (0 when a == b)."""
    return min(_common(synset(a).wnid, synset(b).wnid))[0]


def classes_under(x: SynsetLike) -> list[int]:
    """Sorted ImageNet class indices whose ancestors include ``x`` (or that are ``x``)."""
    h = _hierarchy()
    w = synset(x).wnid
    return [i for i, c in enumerate(h.classes) if w in h.up[c]]


def class_count(x: SynsetLike) -> int:
    """``len(classes_under(x))``, precomputed."""
    return _hierarchy().class_count[synset(x).wnid]


@cache
def class_distance_matrix() -> np.ndarray:
    """``D[i, j] = tree_distance(class i, class j)`` for all 1000 x 1000 pairs (read-only, cached)."""
    h = _hierarchy()
    n = len(h.classes)
    big = np.iinfo(np.int16).max
    dist = np.full((n, n), big, dtype=np.int16)
    # for every ancestor c: D[i, j] <= up(i, c) + up(j, c) over the classes under c
    members: dict[str, list[tuple[int, int]]] = {}
    for i, w in enumerate(h.classes):
        for a, d in h.up[w].items():
            members.setdefault(a, []).append((i, d))
    for rows in members.values():
        idx = np.fromiter((i for i, _ in rows), dtype=np.intp, count=len(rows))
        up = np.fromiter((d for _, d in rows), dtype=np.int16, count=len(rows))
        block = np.ix_(idx, idx)
        dist[block] = np.minimum(dist[block], up[:, None] + up[None, :])
    out = dist.astype(np.int64)
    out.setflags(write=False)
    return out


@cache
def _distance_rows() -> tuple[tuple[int, ...], ...]:
    # plain Python ints: indexing tuples is several times faster than numpy scalar access
    return tuple(tuple(row) for row in class_distance_matrix().tolist())


def class_distance(i: int, j: int) -> int:
    """Tree distance between ImageNet classes ``i`` and ``j`` (cheap after the first call)."""
    rows = _distance_rows()
    if not (0 <= i < len(rows) and 0 <= j < len(rows)):
        raise IndexError(f"class indices must be in 0-{len(rows) - 1}, got {i}, {j}")
    return rows[i][j]


def ambiguous_names() -> dict[str, tuple[int, ...]]:
    """Names (lemmas or CLIP names, case-insensitive) shared by several classes -> class indices."""
    from clipcompare.imagenet.classes import imagenet_classes

    owners: dict[str, set[int]] = {}
    for c in imagenet_classes():
        for name in {*(_normalize(n) for n in synset(c.index).lemmas), _normalize(c.clip_name)}:
            owners.setdefault(name, set()).add(c.index)
    return {k: tuple(sorted(v)) for k, v in sorted(owners.items()) if len(v) > 1}


def subtree(x: SynsetLike, max_depth: int | None = None) -> dict[str, Any]:
    """Nested ``{wnid, name, classes, children}`` below ``x``, ``max_depth`` levels deep (None: all)."""
    s = synset(x)
    node: dict[str, Any] = {"wnid": s.wnid, "name": s.name, "classes": class_count(s), "children": []}
    if max_depth is None or max_depth > 0:
        below = None if max_depth is None else max_depth - 1
        node["children"] = [subtree(c, below) for c in children(s)]
    return node
