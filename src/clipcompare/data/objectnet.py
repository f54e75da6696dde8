"""ObjectNet 1.0 as released: ``--dataset objectnet=PATH``.

PATH is the folder holding ``objectnet-1.0/`` (or that folder itself)::

    objectnet-1.0/images/<folder>/*.png           313 object folders
    objectnet-1.0/mappings/folder_to_objectnet_label.json    folder → ObjectNet label
    objectnet-1.0/mappings/objectnet_to_imagenet_1k.json     ObjectNet label → "ImageNet name; name; …"
    objectnet-1.0/mappings/pytorch_to_imagenet_2012_id.json  PyTorch class index → ImageNet 2012 id
    objectnet-1.0/mappings/imagenet_to_label_2012_v2         ImageNet 2012 id (line number) → name

(the mapping files may also lie directly in PATH, where CLIP_benchmark's loader copies them). As in
the CLIP paper, the imagenet-testbed and CLIP_benchmark (``datasets/objectnet.py``, after wise-ft),
only the 113 ObjectNet classes that map to ImageNet classes are scored, in the order of their sorted
folder names, named by their lower-cased ObjectNet label: a supervised model scores each by its best
logit among the class's ImageNet classes (``ClassSet.imagenet_groups``), a CLIP model by its
zero-shot head over the 113 names. ObjectNet's images carry a 1-pixel red frame which its README
says to remove before use: one pixel is cropped from every side after decoding (``border=1``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipcompare.classes import ClassSet
from clipcompare.data.base import DatasetSpec, ImageDataset, check_root, class_folders, collect_samples, few
from clipcompare.errors import UserError

MAPPING_FILES = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                 "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")
BORDER = 1  # ObjectNet's red frame, in pixels


def _release_dir(root: Path) -> Path:
    """``root/objectnet-1.0`` or ``root`` itself when it is that folder; or the release holding ``root``
    when ``root`` is its ``images/`` folder (what run.json records as the dataset's root)."""
    check_root(root, "objectnet")
    inner = root / "objectnet-1.0"
    if inner.is_dir():
        return inner
    if root.name == "images" and not (root / "mappings").is_dir() and not any((root / f).is_file() for f in MAPPING_FILES):
        return root.parent
    return root


def _mapping_file(release: Path, root: Path, name: str) -> Path:
    # release.parent: where CLIP_benchmark's loader copies the mappings, reached from a root of images/
    for folder in (release / "mappings", root, release, *((release.parent,) if root != release.parent else ())):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"dataset objectnet: mapping file {name} not found in {release / 'mappings'} "
                    f"(the ObjectNet 1.0 release has {', '.join(MAPPING_FILES)} there)")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"dataset objectnet: cannot read {path}: {exc}") from None


def imagenet_groups(release: Path, root: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Folder → (ObjectNet label, sorted PyTorch ImageNet indices) for the classes that map to ImageNet."""
    folder_label = _json(_mapping_file(release, root, MAPPING_FILES[0]))
    to_imagenet = _json(_mapping_file(release, root, MAPPING_FILES[1]))
    pytorch_to_id = _json(_mapping_file(release, root, MAPPING_FILES[2]))
    names_file = _mapping_file(release, root, MAPPING_FILES[3])
    for path, obj in ((MAPPING_FILES[0], folder_label), (MAPPING_FILES[1], to_imagenet), (MAPPING_FILES[2], pytorch_to_id)):
        if not isinstance(obj, dict):
            raise UserError(f"dataset objectnet: {path} must hold one JSON object")
    try:
        lines = names_file.read_text(encoding="utf-8").splitlines()
        id_to_pytorch = {int(v): int(k) for k, v in pytorch_to_id.items()}
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise UserError(f"dataset objectnet: cannot read the ImageNet id mappings ({exc})") from None
    pytorch_of_name: dict[str, int] = {}
    for imagenet_id, line in enumerate(lines):
        if line.strip() and imagenet_id in id_to_pytorch:
            pytorch_of_name[line.strip()] = id_to_pytorch[imagenet_id]
    label_folder = {str(label): str(folder) for folder, label in folder_label.items()}
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for label, names in to_imagenet.items():
        folder = label_folder.get(label)
        if folder is None:
            raise UserError(f"dataset objectnet: {MAPPING_FILES[1]} names ObjectNet label {label!r}, which "
                            f"{MAPPING_FILES[0]} gives no folder")
        parts = [n.strip() for n in str(names).split(";") if n.strip()]
        unknown = [n for n in parts if n not in pytorch_of_name]
        if unknown or not parts:
            raise UserError(f"dataset objectnet: {label!r} maps to ImageNet name(s) not in {names_file.name}: "
                            f"{few(unknown) or repr(names)}")
        indices = tuple(sorted({pytorch_of_name[n] for n in parts}))
        if any(not 0 <= i < 1000 for i in indices):
            raise UserError(f"dataset objectnet: {label!r} maps outside the 1000 ImageNet classes: {indices}")
        out[folder] = (str(label), indices)
    if not out:
        raise UserError(f"dataset objectnet: {MAPPING_FILES[1]} maps no class to ImageNet")
    return out


def objectnet_dataset(spec: DatasetSpec, limit_per_class: int | None) -> ImageDataset:
    """The 113 ImageNet-mapped classes of ObjectNet (of those whose folders are present)."""
    release = _release_dir(spec.root)
    groups = imagenet_groups(release, spec.root)
    images = release / "images"
    if not images.is_dir():
        raise UserError(f"dataset objectnet: no images/ folder in {release} (expected images/<folder>/*.png)")
    present = set(class_folders(images, spec.kind))
    order = sorted(groups)  # every mapped class is scored, present or not (as imagenet-r's 200)
    pairs = [(folder, k) for k, folder in enumerate(order) if folder in present]
    if not pairs:
        raise UserError(f"dataset objectnet: none of the {len(order)} ImageNet-mapped class folders is in {images} "
                        f"(e.g. {few(order, 3)})")
    classes = ClassSet(tuple(groups[f][0].lower() for f in order),
                       imagenet_groups=tuple(groups[f][1] for f in order))
    samples = collect_samples(images, spec.kind, pairs, limit_per_class)
    notes = (f"{len(present) - len(pairs)} ObjectNet class folder(s) that map to no ImageNet class are not scored",) \
        if len(present) > len(pairs) else ()
    return ImageDataset(spec.name or spec.kind, spec.kind, images, classes, samples, notes, border=BORDER)
