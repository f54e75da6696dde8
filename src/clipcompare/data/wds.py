"""CLIP_benchmark's webdatasets: ``--dataset wds=PATH`` (classification) and ``retrieval --wds PATH``.

The layout is CLIP_benchmark's (``clip_benchmark.datasets.builder.build_wds_dataset``, written by
``clip_benchmark_export_wds`` / ``clip_benchmark.webdataset_builder.convert_dataset``)::

    PATH/
        SPLIT/nshards.txt      number of shards N (required)
        SPLIT/0.tar … N-1.tar  samples: KEY.webp|png|jpg|jpeg + KEY.cls (class id) or KEY.txt (captions)
        classnames.txt         one class name per line (classification)
        zeroshot_classification_templates.txt   one template per line, ``{c}`` for the class name
        dataset_type.txt       ``retrieval`` for caption sets (default: classification)

PATH is a local folder or ``hf://datasets/ORG/REPO[@REVISION]``, a dataset repository already in the
local Hugging Face cache (``huggingface-cli download --repo-type dataset clip-benchmark/wds_imagenet1k``
where there is network); it is never fetched. A sample's image is the first of webp, png, jpg, jpeg it
has (CLIP_benchmark's order); each sample is named ``SPLIT/SHARD/KEY`` (``test/0.tar/s0000123``: keys
repeat across splits), which is what resume, ``skipped.jsonl`` and the predictions' ``path`` column hold.

Why plain :mod:`tarfile` and not the ``webdataset`` library: evaluation needs every sample's key and
label *before* any model runs (resume decides what is pending, metrics need the targets, a
``--limit-per-class`` must pick the same samples every time), and one-line errors for a shard that
is truncated or not a tar. So each shard's headers are read once (:func:`scan_shard`; the images
are skipped by seeking, only the small ``.cls``/``.txt`` members are read), which gives each
sample's image as an (offset, size) in its shard. The images are then read with one ``pread`` each,
in dataset order, so every shard is streamed front to back — by DataLoader workers or decode threads
alike, and by a torchrun rank that takes whole shards (``ImageDataset.rank_share``). The
``webdataset`` library streams tar members without an index: it can neither say which samples are
already predicted without reading their images, nor tell a truncated shard from a short one.

Bad input: a missing ``nshards.txt`` or shard, a shard that is not a tar or is truncated, a missing
``classnames.txt``, a class id out of range are one-line :class:`UserError`s before any model runs. A
sample without an image, without a label or whose label is not an integer stays in the dataset and is
skipped and counted when read (``skipped.jsonl``), like an undecodable image.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from clipcompare.classes import ClassSet
from clipcompare.data.base import DatasetSpec, ImageDataset, Sample, few
from clipcompare.errors import UserError

IMAGE_KEYS: tuple[str, ...] = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's to_tuple order
DEFAULT_SPLIT = "test"
HF_PREFIX = "hf://datasets/"
NO_LABEL = -1  # the target of a sample without a .cls (skipped when read)


# --------------------------------------------------------------------------- where the set is


def resolve_root(text: str | Path) -> Path:
    """A local folder, or ``hf://datasets/ORG/REPO[@REV]`` from the local Hugging Face cache only."""
    raw = str(text)
    # Path("hf://x") collapses the double slash: accept both spellings
    if raw.startswith(("hf://", "hf:/")):
        rest = raw.split(":", 1)[1].lstrip("/")
        if not rest.startswith("datasets/") or rest.count("/") < 2:
            raise UserError(f"{raw}: expected {HF_PREFIX}ORG/REPO (a dataset repository in the Hugging Face cache)")
        repo, _, revision = rest[len("datasets/"):].partition("@")
        return _hf_snapshot(repo.strip("/"), revision or None)
    root = Path(raw).expanduser()
    if not root.exists():
        raise UserError(f"webdataset {root} does not exist")
    if not root.is_dir():
        raise UserError(f"webdataset {root} is not a directory (expected the folder holding SPLIT/nshards.txt)")
    return root


def _hf_snapshot(repo: str, revision: str | None) -> Path:
    """The cached snapshot folder of a Hugging Face dataset repo; never goes online."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with open_clip
        raise UserError("hf:// datasets need huggingface_hub (pip install huggingface_hub)") from None
    try:
        path = snapshot_download(repo, repo_type="dataset", revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        raise UserError(f"{HF_PREFIX}{repo} is not in the local Hugging Face cache; where there is network, fetch it "
                        f"with: huggingface-cli download --repo-type dataset {repo}") from None
    except Exception as exc:  # noqa: BLE001 - a malformed repo id or cache: one line
        raise UserError(f"{HF_PREFIX}{repo}: {type(exc).__name__}: {exc}") from None
    return Path(path)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"webdataset: cannot read {what} {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class WdsLayout:
    """A webdataset's metadata: its type, classes and templates, and the shards of one split."""

    root: Path
    split: str
    dataset_type: str
    shards: tuple[Path, ...]
    classnames: tuple[str, ...] | None
    templates: tuple[str, ...] | None


def read_layout(root: Path, split: str = DEFAULT_SPLIT) -> WdsLayout:
    """``root``'s metadata files and the shard list of ``split``; one-line errors for what is missing."""
    split_dir = root / split
    nshards_file = split_dir / "nshards.txt"
    if not nshards_file.is_file():
        present = sorted(p.name for p in root.iterdir() if (p / "nshards.txt").is_file()) if root.is_dir() else []
        hint = f" (splits here: {', '.join(present)}; pick one with --split)" if present else \
            " (not a CLIP_benchmark webdataset: expected SPLIT/nshards.txt and SPLIT/0.tar …)"
        raise UserError(f"webdataset {root}: no {split}/nshards.txt{hint}")
    text = _read_text(nshards_file, "").strip()
    count = _plain_int(text) or 0
    if count < 1:
        raise UserError(f"webdataset {nshards_file}: expected a number of shards >= 1, got {text[:40]!r}")
    shards = tuple(split_dir / f"{k}.tar" for k in range(count))
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise UserError(f"webdataset {split_dir}: nshards.txt says {len(shards)} shards but {few(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} missing")
    type_file = root / "dataset_type.txt"
    dataset_type = _read_text(type_file, "").strip().lower() if type_file.is_file() else "classification"
    names = _lines(root / "classnames.txt")
    templates = _lines(root / "zeroshot_classification_templates.txt")
    return WdsLayout(root, split, dataset_type or "classification", shards, names, templates)


def _lines(path: Path) -> tuple[str, ...] | None:
    """Stripped non-empty lines (CLIP_benchmark strips each line), or None when the file is absent."""
    if not path.is_file():
        return None
    return tuple(line.strip() for line in _read_text(path, "").splitlines() if line.strip())


def clip_benchmark_templates(templates: Sequence[str], path: Path) -> tuple[str, ...]:
    """CLIP_benchmark's ``{c}`` templates as ``str.format`` templates with one ``{}``."""
    out = []
    for n, template in enumerate(templates, 1):
        converted = template.replace("{c}", "{}")
        try:
            ok = converted.format("x") != converted
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"{path}:{n}: a template needs '{{c}}' (the class name), got {template!r}")
        out.append(converted)
    return tuple(out)


# --------------------------------------------------------------------------- one shard


@dataclass
class ShardSample:
    """One sample of a shard: its key, its members' (offset, size), and the small members' contents."""

    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    small: dict[str, bytes] = field(default_factory=dict)

    def image(self) -> tuple[int, int] | None:
        for ext in IMAGE_KEYS:
            if ext in self.members:
                return self.members[ext]
        return None


# webdataset's split of a member name: key = path up to the first dot of the file name, ext = the rest
_KEY_EXT = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")
_SMALL = frozenset({"cls", "txt"})
_SMALL_LIMIT = 1 << 20  # a label or caption file larger than this is not one


def scan_shard(path: Path, small: frozenset[str] = _SMALL) -> list[ShardSample]:
    """Every sample of one tar shard, in order, from its headers; the ``small`` members are read.

    A file that is not a tar, or whose members or end-of-archive marker are cut off, is a UserError.
    """
    seen = 0
    try:
        size = path.stat().st_size
        with path.open("rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            samples: dict[str, ShardSample] = {}
            for member in tar:
                seen += 1
                if not member.isfile():
                    continue
                if member.offset_data + member.size > size:
                    raise UserError(f"webdataset shard {path} is truncated: {member.name} needs "
                                    f"{member.offset_data + member.size} bytes, the file has {size}")
                m = _KEY_EXT.match(member.name)
                if m is None:
                    continue  # no extension, or a hidden/metadata file: not part of a sample
                key, ext = m.group(1), m.group(2).lower()
                sample = samples.setdefault(key, ShardSample(key))
                sample.members[ext] = (member.offset_data, member.size)
                if ext in small and member.size <= _SMALL_LIMIT:
                    data = tar.extractfile(member)
                    sample.small[ext] = data.read() if data is not None else b""
            end = tar.offset
    except tarfile.TarError as exc:
        if seen:  # tarfile read members, then met a cut-off or damaged one
            raise UserError(f"webdataset shard {path} is truncated or damaged after {seen} members ({exc})") from None
        raise UserError(f"webdataset shard {path} is not a readable tar file ({exc})") from None
    except OSError as exc:
        raise UserError(f"webdataset: cannot read shard {path}: {exc.strerror or exc}") from None
    if size - end < 2 * tarfile.BLOCKSIZE:  # tar ends with two zero blocks; a cut-off file lacks them
        raise UserError(f"webdataset shard {path} is truncated (it stops at byte {size} without the tar "
                        "end-of-archive marker)")
    return list(samples.values())


# --------------------------------------------------------------------------- reading images


class ShardReader:
    """Opens a sample's image from its shard by offset (:class:`clipcompare.data.decode.SampleReader`).

    ``index[path]`` is ``(shard number, offset, size)`` or the reason the sample cannot be read (no
    image, no label), which then skips it. Thread-safe (``os.pread``) and picklable for DataLoader
    workers: each process opens the shards it reads itself.
    """

    def __init__(self, shards: Sequence[Path], index: dict[str, tuple[int, int, int] | str]) -> None:
        self.shards = tuple(str(p) for p in shards)
        self.index = index
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"shards": self.shards, "index": self.index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.shards, self.index = state["shards"], state["index"]
        self._fds, self._lock = {}, threading.Lock()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}

    def shard_number(self, path: str) -> int:
        entry = self.index.get(path)
        if isinstance(entry, tuple):
            return entry[0]
        return int(path.split(".tar/", 1)[0].rpartition("/")[2]) if ".tar/" in path else 0

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        return fd

    def open(self, path: str) -> BinaryIO:
        entry = self.index[path]
        if isinstance(entry, str):
            raise ValueError(entry)
        shard, offset, size = entry
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise OSError(f"short read from {self.shards[shard]} ({len(data)} of {size} bytes; truncated since "
                          "the scan?)")
        return io.BytesIO(data)


# --------------------------------------------------------------------------- the dataset kinds


def wds_dataset(spec: DatasetSpec, limit_per_class: int | None) -> ImageDataset:
    """``--dataset wds=PATH[:SPLIT]``: a CLIP_benchmark classification webdataset (split: ``test`` by default).

    Class names mapping one to one to ImageNet classes (ImageNet's 1000 or a subset, by CLIP's class
    names, wnids or lemmas) let the supervised models take part, as for ``folder``.
    """
    root = resolve_root(spec.root)
    layout = read_layout(root, spec.option or DEFAULT_SPLIT)
    if layout.dataset_type != "classification":
        hint = " (use clipcompare retrieval --wds)" if layout.dataset_type == "retrieval" else ""
        raise UserError(f"webdataset {root}: dataset_type.txt says {layout.dataset_type!r}; --dataset wds= reads "
                        f"classification sets{hint}")
    if not layout.classnames:
        raise UserError(f"webdataset {root}: no classnames.txt (one class name per line), needed to score the classes")
    classes = _class_set(layout)
    samples: list[Sample] = []
    index: dict[str, tuple[int, int, int] | str] = {}
    per_class: dict[int, int] = {}
    bad_labels: list[str] = []
    n = len(classes)
    for number, shard in enumerate(layout.shards):
        for s in scan_shard(shard):
            path = f"{layout.split}/{shard.name}/{s.key}"
            image = s.image()
            target, reason = NO_LABEL, None
            if "cls" not in s.small:
                reason = "no .cls label in the sample"
            else:
                text = s.small["cls"].decode("utf-8", "replace").strip()
                label = _plain_int(text)
                if label is None:  # not a number ("²", "--5", "cat"): skipped and counted, as a sample without one
                    reason = f"the .cls label {text[:20]!r} is not a class id"
                elif not 0 <= label < n:
                    bad_labels.append(f"{path}.cls={text[:20]}")
                    continue
                else:
                    target = label
            if image is None:
                reason = f"no image ({', '.join('.' + e for e in IMAGE_KEYS)}) in the sample"
            if limit_per_class is not None and target != NO_LABEL:
                if per_class.get(target, 0) >= limit_per_class:
                    continue
                per_class[target] = per_class.get(target, 0) + 1
            index[path] = reason if reason else (number, *image)  # type: ignore[misc]
            samples.append(Sample(path, target))
    if bad_labels:
        raise UserError(f"webdataset {root}: class id(s) not in 0..{n - 1} (classnames.txt has {n} classes): "
                        f"{few(bad_labels, 3)}")
    if not samples:
        raise UserError(f"webdataset {root}: split {layout.split!r} has no samples")
    notes: tuple[str, ...] = ()
    if not classes.imagenet_scorable:
        notes = ("not all classes are ImageNet classes (classnames.txt does not map one to one to ImageNet)",)
    shift = stands_for(root, classes)
    if set_name(root).lower() in NOT_A_SHIFT:
        notes += (NOT_A_SHIFT[set_name(root).lower()],)
    if shift:
        notes += (f"{set_name(root)} is CLIP_benchmark's copy of {shift}: it counts as {shift} on the robustness map",)
    return ImageDataset(spec.name or spec.kind, spec.kind, root, classes, tuple(samples), notes,
                        reader=ShardReader(layout.shards, index), stands_for=shift, option=layout.split)


_PLAIN_INT = re.compile(r"-?[0-9]+")


def _plain_int(text: str) -> int | None:
    """``text`` as an integer when it is plain ASCII digits (with a minus); int() alone also takes "٣", "+3",
    "1_0" and surrounding spaces, which no exporter writes."""
    return int(text) if _PLAIN_INT.fullmatch(text) else None


def _class_set(layout: WdsLayout) -> ClassSet:
    """classnames.txt, with ImageNet indices when they map one to one, and the set's own templates."""
    names = tuple(layout.classnames or ())
    templates = None
    if layout.templates:
        templates = clip_benchmark_templates(layout.templates, layout.root / "zeroshot_classification_templates.txt")
    return ClassSet(names, imagenet_indices_of(names), templates=templates)


def imagenet_indices_of(names: Sequence[str]) -> tuple[int, ...] | None:
    """The ImageNet index of each class name, or None when they do not map one to one.

    CLIP_benchmark's ImageNet sets name their classes with CLIP's edited names, in which some names
    repeat (``missile``, ``sunglasses``) or are ambiguous lemmas (``crane``): the whole list is first
    matched against the 1000, ImageNet-R's 200 and ImageNet-A's 200 CLIP names in order; otherwise
    each name must name one ImageNet class (``ClassSet.from_labels``: name, wnid or lemma).
    """
    from clipcompare.imagenet.classes import IMAGENET_A_INDICES, IMAGENET_R_INDICES, imagenet_classes

    clip = [c.clip_name.lower() for c in imagenet_classes()]
    wanted = [n.strip().lower() for n in names]
    for candidate in (tuple(range(1000)), tuple(IMAGENET_R_INDICES), tuple(IMAGENET_A_INDICES)):
        if wanted == [clip[i] for i in candidate]:
            return candidate
    indices = ClassSet.from_labels(names).imagenet_indices
    if indices is not None and len(set(indices)) != len(indices):
        return None  # two names for one ImageNet class: no one-to-one slice of the logits
    return indices


# CLIP_benchmark's copies of the robustness suite (hub repositories clip-benchmark/wds_…), by the kind
# they stand for, with the classes they must have. Not wds_objectnet: its 113 class names carry no
# ImageNet ids (the ObjectNet release's mapping files are neither in it nor shipped by CLIP_benchmark or
# clipcompare, and the names alone do not give ObjectNet's many-to-many ImageNet groups), so no
# supervised model could be scored, and its images keep the 1-pixel frame objectnet= crops: a CLIP point
# from it would not be the objectnet measurement the reference rows hold.
STANDS_FOR: dict[str, str] = {
    "wds_imagenet1k": "imagenet", "wds_imagenetv2": "imagenet-v2", "wds_imagenet_sketch": "imagenet-sketch",
    "wds_imagenet-r": "imagenet-r", "wds_imagenet-a": "imagenet-a",
}
NOT_A_SHIFT: dict[str, str] = {
    "wds_objectnet": "wds_objectnet is not counted as objectnet on the robustness map (its classes carry no "
                     "ImageNet ids and its images keep ObjectNet's 1-pixel frame): use --dataset objectnet=PATH "
                     "with the ObjectNet 1.0 release for that",
}


def set_name(root: Path) -> str:
    """The set's name: its folder, or the repository of a Hugging Face cache snapshot."""
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("datasets--"):
        return root.parent.parent.name.rsplit("--", 1)[-1]
    return root.name


def stands_for(root: Path, classes: ClassSet) -> str | None:
    """The dataset kind a CLIP_benchmark copy of ImageNet or a shift is (``wds_imagenet-r`` → ``imagenet-r``),
    when its name and its classes both say so: the robustness map and ImageNet-R/-A's x-axis use it."""
    from clipcompare.imagenet.classes import IMAGENET_A_INDICES, IMAGENET_R_INDICES

    kind = STANDS_FOR.get(set_name(root).lower())
    expected = {"imagenet-r": tuple(IMAGENET_R_INDICES), "imagenet-a": tuple(IMAGENET_A_INDICES)}
    if kind is None or classes.imagenet_indices != expected.get(kind, tuple(range(1000))):
        return None
    return kind


@dataclass(frozen=True)
class WdsCaptions:
    """A retrieval webdataset: sample paths, every sample's captions, and the reader of its images."""

    root: Path
    split: str
    paths: tuple[str, ...]
    captions: tuple[tuple[str, ...], ...]
    reader: ShardReader
    unreadable: int  # samples without an image (skipped and counted)


def read_wds_captions(text: str | Path, split: str = DEFAULT_SPLIT) -> WdsCaptions:
    """A CLIP_benchmark retrieval webdataset (``dataset_type.txt`` = retrieval; captions one per line)."""
    root = resolve_root(text)
    layout = read_layout(root, split)
    if layout.dataset_type != "retrieval":
        raise UserError(f"webdataset {root}: dataset_type.txt says {layout.dataset_type!r}, not 'retrieval' "
                        "(classification sets go to evaluate --dataset wds=)")
    paths: list[str] = []
    captions: list[tuple[str, ...]] = []
    index: dict[str, tuple[int, int, int] | str] = {}
    missing = 0
    for number, shard in enumerate(layout.shards):
        for s in scan_shard(shard):
            path = f"{layout.split}/{shard.name}/{s.key}"
            image = s.image()
            caps = tuple(c.strip() for c in s.small.get("txt", b"").decode("utf-8", "replace").splitlines()
                         if c.strip())
            if image is None:
                missing += 1
                continue
            index[path] = (number, *image)
            paths.append(path)
            captions.append(caps)
    if not paths:
        raise UserError(f"webdataset {root}: split {layout.split!r} has no samples with an image")
    return WdsCaptions(root, layout.split, tuple(paths), tuple(captions), ShardReader(layout.shards, index), missing)
