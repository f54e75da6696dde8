"""Captioned image splits for contrastive training and retrieval: COCO 2014, Karpathy, or a captions file.

Sources (``load_caption_splits``):

* ``split="seed"`` — COCO 2014's official layout under ``ROOT``
  (``annotations/captions_{train,val}2014.json``, ``train2014/``, ``val2014/``). The draw, for each of
  train2014 (train, 16,000 images by default) and val2014 (val, 4,000): the candidate images (those
  with enough captions, see below) sorted by COCO image id, then
  ``np.random.default_rng(seed).permutation(len(candidates))`` — a fresh generator per source — and
  the first N of that order. A smaller N is a prefix of a larger one.
* ``split="karpathy=FILE"`` — the standard ``dataset_coco.json`` (``images[].filepath/filename/split/
  sentences[].raw/cocoid``): train = ``train`` + ``restval`` (113,287), val = ``val`` (5,000), test =
  ``test`` (5,000); image paths are ``ROOT/filepath/filename``. Without a size every image of the split
  is used (sorted by cocoid); with a size, the same seeded draw as above.
* ``captions_file=FILE`` — the user's own data, open_clip's convention: CSV/TSV with a header naming
  ``filepath`` and ``title`` columns (tab or comma, sniffed), or JSONL with ``filepath``/``image`` and
  ``caption``/``title`` keys. Rows of the same image are grouped (first-seen order). Relative paths are
  relative to ``ROOT`` when given, else to the file's folder. The images, sorted by path, are drawn
  as above once: val is the first ``val_size`` (default: a fifth, at least 1, when training; every
  image for retrieval alone), train the next ``train_size`` (default: the rest).

Exactly 5 captions per image: an image with more keeps its first 5 in file order (as CLIP_benchmark
does). An image with fewer is dropped by default (``short_captions="drop"``): every image then has 5
distinct chances in image→text retrieval and weighs the same in text→image, so Recall@K means what
it means on COCO. ``short_captions="cycle"`` repeats the existing captions in order up to 5 instead
(for data with one caption per image); duplicate captions tie in image→text ranking, so those
recalls are not comparable to COCO's. Missing image files are skipped and counted at load time;
undecodable ones are skipped when read (``retrieval.encode_images``). Every choice and count goes
into ``CaptionSplits.description`` (stored in run.json / retrieval.json).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipcompare.data.base import few
from clipcompare.errors import UserError

log = logging.getLogger(__name__)

CAPTIONS_PER_IMAGE = 5
SEED_SIZES = {"train": 16_000, "val": 4_000}
SHORT_CAPTION_POLICIES = ("drop", "cycle")
SPLIT_NAMES = ("train", "val", "test")
DRAW_RULE = (
    "candidates sorted by image id (path for a captions file); order = "
    "numpy.random.default_rng(seed).permutation(len(candidates)), a fresh generator per source; "
    "the first N of that order"
)


@dataclass(frozen=True)
class CaptionedImages:
    """One split: image paths (relative to ``root``) with exactly 5 captions each, in the same order."""

    name: str  # "train" | "val" | "test"
    root: Path
    paths: tuple[str, ...]
    captions: tuple[tuple[str, ...], ...]
    image_ids: tuple[str, ...]  # COCO image id as str, or the path for a captions file
    reader: Any = None  # images in tar shards (a data.wds.ShardReader); None: files under root

    def __post_init__(self) -> None:
        if not len(self.paths) == len(self.captions) == len(self.image_ids):
            raise ValueError("paths, captions and image_ids must be parallel")
        if any(len(c) != CAPTIONS_PER_IMAGE for c in self.captions):
            raise ValueError(f"every image needs exactly {CAPTIONS_PER_IMAGE} captions")

    def __len__(self) -> int:
        return len(self.paths)

    def flat_captions(self) -> tuple[list[str], list[int]]:
        """All captions image by image, and the image index of each (``text_to_image``)."""
        texts = [c for caps in self.captions for c in caps]
        owner = [i for i, caps in enumerate(self.captions) for _ in caps]
        return texts, owner


@dataclass(frozen=True)
class CaptionSplits:
    """The splits asked for (``which``); the others are None. ``description`` is JSON-able."""

    train: CaptionedImages | None  # None for retrieval-only loading
    val: CaptionedImages | None  # None only when "val" was not in ``which`` (e.g. Karpathy test alone)
    description: dict
    test: CaptionedImages | None = None  # Karpathy's test split, when asked for

    def __getitem__(self, name: str) -> CaptionedImages:
        split = getattr(self, name, None) if name in SPLIT_NAMES else None
        if split is None:
            raise KeyError(name)
        return split


@dataclass
class _Entry:
    """One image before the draw: sort key, path relative to root, captions in file order."""

    key: Any
    path: str
    image_id: str
    captions: list[str]


# --------------------------------------------------------------------------- public entry point


def load_caption_splits(
    coco: Path | None = None,
    *,
    split: str = "seed",
    train_size: int | None = None,
    val_size: int | None = None,
    captions_file: Path | None = None,
    seed: int = 0,
    which: tuple[str, ...] = ("train", "val"),
    short_captions: str = "drop",
) -> CaptionSplits:
    """Load the captioned splits in ``which`` (see the module docstring for every rule).

    Raises :class:`UserError` (one line) for a missing root or annotation file, a malformed file, an
    empty split, or a size larger than the split has — all before any model is loaded.
    """
    which = tuple(which)
    unknown = [w for w in which if w not in SPLIT_NAMES]
    if unknown or not which:
        raise UserError(f"unknown split name(s) {few(unknown)}; choose from {', '.join(SPLIT_NAMES)}")
    if short_captions not in SHORT_CAPTION_POLICIES:
        raise UserError(f"short captions policy must be one of {', '.join(SHORT_CAPTION_POLICIES)}, "
                        f"not {short_captions!r}")
    for flag, value in (("--train-size", train_size), ("--val-size", val_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    coco = Path(coco).expanduser() if coco is not None else None
    if coco is not None and not coco.is_dir():
        raise UserError(f"--coco {coco}: {'not a directory' if coco.exists() else 'does not exist'}")

    if captions_file is not None:
        return _from_captions_file(Path(captions_file).expanduser(), coco, train_size, val_size, seed, which,
                                   short_captions)
    if coco is None:
        raise UserError("--coco ROOT is required (the folder holding annotations/, train2014/ and val2014/), "
                        "or give --captions FILE")
    kind, _, arg = split.partition("=")
    if kind == "seed" and not arg:
        return _seed_split(coco, train_size, val_size, seed, which, short_captions)
    if kind == "karpathy":
        if not arg:
            raise UserError("--split karpathy=FILE: name the dataset_coco.json file")
        return _karpathy_split(coco, Path(arg).expanduser(), train_size, val_size, seed, which, short_captions)
    raise UserError(f"--split {split!r}: expected 'seed' or 'karpathy=FILE'")


def load_wds_captions(path: str | Path, split: str = "test", short_captions: str = "drop",
                      val_size: int | None = None, seed: int = 0) -> CaptionSplits:
    """A CLIP_benchmark retrieval webdataset (:mod:`clipcompare.data.wds`) as the ``test`` split: every sample
    in shard order, or ``val_size`` of them drawn with ``seed`` as the other sources draw; each sample's
    captions (its ``.txt``, one per line) get the 5-caption policy above."""
    from clipcompare.data.wds import read_wds_captions

    if short_captions not in SHORT_CAPTION_POLICIES:
        raise UserError(f"short captions policy must be one of {', '.join(SHORT_CAPTION_POLICIES)}, "
                        f"not {short_captions!r}")
    wds = read_wds_captions(path, split)
    entries = [_Entry(k, p, p, list(c)) for k, (p, c) in enumerate(zip(wds.paths, wds.captions))]
    kept, counts = _apply_policy(entries, short_captions)
    if not kept:
        raise UserError(_none_left(f"webdataset {wds.root} split {split!r}", len(entries), counts, short_captions))
    if val_size is not None and val_size > len(kept):
        raise UserError(f"--val-size {val_size}: webdataset {wds.root} split {split!r} has {len(kept)} samples with "
                        f"{CAPTIONS_PER_IMAGE} captions; pass a smaller --val-size")
    # the draw keys are the shard order, as the other sources' are their file order
    picks = kept if val_size is None else _draw(kept, seed)[:val_size]
    description = _description("wds", seed, short_captions)
    description.update(wds=str(wds.root), wds_split=wds.split,
                       draw="every sample, in shard order" if val_size is None else description["draw"],
                       missing_images="samples without an image are skipped and counted at load time")
    description["splits"]["test"] = {"source": str(wds.root / wds.split), "asked": val_size, "candidates": len(kept),
                                     "drawn": len(picks), "got": len(picks), "missing_images": wds.unreadable,
                                     "missing_examples": [], **counts}
    images = CaptionedImages("test", wds.root, tuple(e.path for e in picks), tuple(tuple(e.captions) for e in picks),
                             tuple(e.image_id for e in picks), reader=wds.reader)
    return CaptionSplits(None, None, description, images)


# --------------------------------------------------------------------------- the three sources


def _seed_split(coco: Path, train_size: int | None, val_size: int | None, seed: int, which: tuple[str, ...],
                policy: str) -> CaptionSplits:
    if "test" in which:
        raise UserError("--split seed has train and val splits only (a test split needs --split karpathy=FILE)")
    sources = {"train": "train2014", "val": "val2014"}
    sizes = {"train": train_size, "val": val_size}
    description = _description("seed", seed, policy)
    out: dict[str, CaptionedImages] = {}
    for name in which:
        folder = sources[name]
        ann = coco / "annotations" / f"captions_{folder}.json"
        entries = _read_coco_annotations(ann, folder)
        asked = sizes[name] if sizes[name] is not None else SEED_SIZES[name]
        out[name] = _finish(name, coco, entries, asked, seed, policy, description,
                            source=str(ann), size_flag=f"--{name}-size", always_draw=True)
    return CaptionSplits(out.get("train"), out.get("val"), description, out.get("test"))


def _karpathy_split(coco: Path, file: Path, train_size: int | None, val_size: int | None, seed: int,
                    which: tuple[str, ...], policy: str) -> CaptionSplits:
    groups = _read_karpathy(file)
    sizes = {"train": train_size, "val": val_size, "test": val_size}
    description = _description("karpathy", seed, policy)
    description["karpathy_file"] = str(file)
    description["karpathy_splits"] = "train = train + restval, val = val, test = test"
    out = {
        name: _finish(name, coco, groups[name], sizes[name], seed, policy, description, source=str(file),
                      size_flag="--train-size" if name == "train" else "--val-size", always_draw=False)
        for name in which
    }
    return CaptionSplits(out.get("train"), out.get("val"), description, out.get("test"))


def _from_captions_file(file: Path, coco: Path | None, train_size: int | None, val_size: int | None, seed: int,
                        which: tuple[str, ...], policy: str) -> CaptionSplits:
    if "test" in which:
        raise UserError("a captions file gives train and val splits (val: the held-out draw); there is no test split")
    root = coco if coco is not None else file.parent
    rows = _read_captions_file(file)
    entries = _group_rows(rows)
    description = _description("captions", seed, policy)
    description.update(captions_file=str(file), root=str(root), rows=len(rows))
    kept, counts = _apply_policy(entries, policy)
    if not kept:
        raise UserError(_none_left(f"captions file {file}", len(entries), counts, policy))
    order = _draw(kept, seed)
    training = "train" in which
    n_val = val_size if val_size is not None else (max(1, len(kept) // 5) if training else len(kept))
    n_train = train_size if train_size is not None else len(kept) - n_val
    if n_val + (n_train if training else 0) > len(kept) or (training and n_train < 1):
        raise UserError(f"captions file {file}: asked for {n_val} val"
                        f"{f' + {n_train} train' if training else ''} images but it has {len(kept)} "
                        f"with {CAPTIONS_PER_IMAGE} captions; use smaller --val-size/--train-size")
    description["held_out"] = "val = the first val_size of the draw, train = the next train_size"
    picks = {"val": order[:n_val], "train": order[n_val:n_val + n_train]}
    out = {}
    for name in which:
        out[name] = _materialise(name, root, picks[name], len(kept), counts, description, source=str(file),
                                 asked=len(picks[name]))
    return CaptionSplits(out.get("train"), out.get("val"), description)


# --------------------------------------------------------------------------- drawing and counting


def _description(kind: str, seed: int, policy: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "seed": seed,
        "draw": DRAW_RULE,
        "captions_per_image": CAPTIONS_PER_IMAGE,
        "more_than_5_captions": "the first 5 in file order are kept (as CLIP_benchmark)",
        "fewer_than_5_captions": ("the image is dropped" if policy == "drop"
                                  else "the captions are repeated in order up to 5"),
        "short_captions": policy,
        "missing_images": "skipped and counted at load time",
        "corrupt_images": "skipped and counted when decoded",
        "splits": {},
    }


def _apply_policy(entries: list[_Entry], policy: str) -> tuple[list[_Entry], dict[str, int]]:
    """Exactly 5 captions each; counts of images that had more, fewer (and were dropped or cycled)."""
    kept: list[_Entry] = []
    more = fewer = 0
    for e in entries:
        n = len(e.captions)
        if n > CAPTIONS_PER_IMAGE:
            more += 1
            e = _Entry(e.key, e.path, e.image_id, e.captions[:CAPTIONS_PER_IMAGE])
        elif n < CAPTIONS_PER_IMAGE:
            fewer += 1
            if policy == "drop" or n == 0:
                continue
            e = _Entry(e.key, e.path, e.image_id, [e.captions[i % n] for i in range(CAPTIONS_PER_IMAGE)])
        kept.append(e)
    return kept, {"images_in_source": len(entries), "more_than_5_captions": more, "fewer_than_5_captions": fewer}


def _draw(entries: list[_Entry], seed: int) -> list[_Entry]:
    ordered = sorted(entries, key=lambda e: e.key)
    return [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]


def _finish(name: str, root: Path, entries: list[_Entry], asked: int | None, seed: int, policy: str,
            description: dict[str, Any], *, source: str, size_flag: str, always_draw: bool) -> CaptionedImages:
    """Policy, size check, draw, existence check: one split of an annotation-file source."""
    kept, counts = _apply_policy(entries, policy)
    if not kept:
        raise UserError(_none_left(f"{name} split ({source})", len(entries), counts, policy))
    if asked is not None and asked > len(kept):
        raise UserError(f"{name} split: asked for {asked} images but {source} has {len(kept)} with "
                        f"{CAPTIONS_PER_IMAGE} captions; pass a smaller {size_flag}")
    if asked is None and not always_draw:
        picks = sorted(kept, key=lambda e: e.key)
    else:
        picks = _draw(kept, seed)[:asked]
    return _materialise(name, root, picks, len(kept), counts, description, source=source, asked=asked)


def _materialise(name: str, root: Path, picks: list[_Entry], candidates: int, counts: dict[str, int],
                 description: dict[str, Any], *, source: str, asked: int | None) -> CaptionedImages:
    """Drop (and count) picks whose file is missing; record the split in ``description``."""
    exists = [os.path.isfile(root / e.path) for e in picks]  # one stat per file: COCO has 123k
    present = [e for e, ok in zip(picks, exists) if ok]
    missing = [e.path for e, ok in zip(picks, exists) if not ok]
    description["splits"][name] = {
        "source": source, "asked": asked, "candidates": candidates, "drawn": len(picks), "got": len(present),
        "missing_images": len(missing), "missing_examples": missing[:5], **counts,
    }
    if missing:
        log.warning("%s split: %d of %d images missing under %s (skipped), e.g. %s",
                    name, len(missing), len(picks), root, missing[0])
    if not present:
        raise UserError(f"{name} split: none of the {len(picks)} images exists under {root} "
                        f"(e.g. {picks[0].path if picks else '?'})")
    return CaptionedImages(name, root, tuple(e.path for e in present), tuple(tuple(e.captions) for e in present),
                           tuple(e.image_id for e in present))


def _none_left(what: str, n: int, counts: dict[str, int], policy: str) -> str:
    if n == 0:
        return f"{what} has no images"
    hint = " (pass --short-captions cycle to repeat them up to 5)" if policy == "drop" else ""
    return f"{what}: none of its {n} images has {CAPTIONS_PER_IMAGE} captions{hint}"


# --------------------------------------------------------------------------- file formats


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc}") from None


def _read_coco_annotations(path: Path, folder: str) -> list[_Entry]:
    """Official captions_*.json → one entry per image id with its captions in file order."""
    doc = _read_json(path, "COCO annotation file")
    try:
        names = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
        entries = {i: _Entry(i, f"{folder}/{n}", str(i), []) for i, n in names.items()}
        for a in doc["annotations"]:
            entry = entries.get(int(a["image_id"]))
            if entry is None:
                raise ValueError(f"annotation {a.get('id')} names image {a['image_id']} missing from 'images'")
            entry.captions.append(_clean(a["caption"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"malformed COCO annotation file {path}: {_reason(exc)} (expected 'images' with "
                        f"'id'/'file_name' and 'annotations' with 'image_id'/'caption')") from None
    return list(entries.values())


def _read_karpathy(path: Path) -> dict[str, list[_Entry]]:
    """dataset_coco.json → entries per split name (train includes restval)."""
    doc = _read_json(path, "Karpathy split file")
    groups: dict[str, list[_Entry]] = {"train": [], "val": [], "test": []}
    target = {"train": "train", "restval": "train", "val": "val", "test": "test"}
    try:
        for im in doc["images"]:
            name = target.get(im["split"])
            if name is None:
                raise ValueError(f"unknown split {im['split']!r}")
            key = int(im["cocoid"]) if "cocoid" in im else str(im["filename"])
            path_rel = f"{im['filepath']}/{im['filename']}" if im.get("filepath") else str(im["filename"])
            groups[name].append(_Entry(key, path_rel, str(key), [_clean(s["raw"]) for s in im["sentences"]]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"malformed Karpathy split file {path}: {_reason(exc)} (expected dataset_coco.json: "
                        f"'images' with 'filepath', 'filename', 'split', 'sentences'[].'raw', 'cocoid')") from None
    return groups


IMAGE_KEYS = ("filepath", "image")
CAPTION_KEYS = ("title", "caption")


def _read_captions_file(path: Path) -> list[tuple[str, str]]:
    """(image path, caption) rows from a CSV/TSV with a header, or a JSONL file."""
    if not path.is_file():
        raise UserError(f"captions file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read captions file {path}: {exc}") from None
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return _jsonl_rows(path, text)
    return _csv_rows(path, text)


def _pick_key(keys: Iterable[str], wanted: Sequence[str]) -> str | None:
    present = set(keys)
    return next((k for k in wanted if k in present), None)


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, str]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"captions file {path} line {n}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"captions file {path} line {n}: expected a JSON object")
        ik, ck = _pick_key(obj, IMAGE_KEYS), _pick_key(obj, CAPTION_KEYS)
        if ik is None or ck is None or not isinstance(obj[ik], str) or not isinstance(obj[ck], str):
            raise UserError(f"captions file {path} line {n}: needs string keys "
                            f"{'/'.join(IMAGE_KEYS)} and {'/'.join(CAPTION_KEYS)}")
        rows.append((obj[ik], _clean(obj[ck])))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[str, str]]:
    first = text.split("\n", 1)[0]
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
    elif path.suffix.lower() == ".csv" and "\t" not in first:
        delimiter = ","
    else:  # open_clip's default is tab-separated whatever the suffix; let the header decide
        delimiter = "\t" if "\t" in first else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)  # quoted newlines stay in a caption
    header = reader.fieldnames or []
    ik, ck = _pick_key(header, IMAGE_KEYS), _pick_key(header, CAPTION_KEYS)
    if ik is None or ck is None:
        raise UserError(f"captions file {path}: the header must name an image column ({' or '.join(IMAGE_KEYS)}) "
                        f"and a caption column ({' or '.join(CAPTION_KEYS)}), found {header!r}")
    rows = []
    for rec in reader:
        img, cap = rec.get(ik), rec.get(ck)
        if not img or cap is None or None in rec:
            raise UserError(f"captions file {path} line {reader.line_num}: expected {len(header)} "
                            f"{'tab' if delimiter == chr(9) else 'comma'}-separated fields")
        rows.append((img, _clean(cap)))
    return rows


def _group_rows(rows: list[tuple[str, str]]) -> list[_Entry]:
    """One entry per image path, captions in row order; the sort key is the path."""
    entries: dict[str, _Entry] = {}
    for img, cap in rows:
        entry = entries.setdefault(img, _Entry(img, img, img, []))
        entry.captions.append(cap)
    return list(entries.values())


def _clean(caption: Any) -> str:
    if not isinstance(caption, str):
        raise TypeError(f"caption {caption!r} is not a string")
    return " ".join(caption.split())


def _reason(exc: BaseException) -> str:
    return f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
