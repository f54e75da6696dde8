"""ImageNet and its shifted variants: wnid folders (val, Sketch, R, A) and ImageNet-V2's index folders."""

from __future__ import annotations

from collections.abc import Sequence

from clipcompare.classes import ClassSet
from clipcompare.data.base import DatasetSpec, ImageDataset, class_folders, collect_samples, few
from clipcompare.errors import UserError


def wnid_folders(
    spec: DatasetSpec, limit_per_class: int | None, *, indices: Sequence[int] | None = None, label: str = "ImageNet"
) -> ImageDataset:
    """Folders named by wnid, scored on ``indices`` (all 1000 when None).

    ImageNet-R/-A pass their 200 classes: both models are then scored on those classes only (the
    supervised logits sliced, CLIP's head built for the subset), as the papers and timm do. Only some
    folders may be present (a sample of the dataset); targets index the kind's full ClassSet.
    """
    from clipcompare.imagenet.classes import imagenet_classes, index_of_wnid

    folders = class_folders(spec.root, spec.kind)
    classes = ClassSet.imagenet(indices)
    position = {imagenet_index: k for k, imagenet_index in enumerate(classes.imagenet_indices or ())}
    pairs: list[tuple[str, int]] = []
    unknown: list[str] = []
    for folder in folders:
        k = position.get(index_of_wnid(folder))  # type: ignore[arg-type]
        if k is None:
            unknown.append(folder)
        else:
            pairs.append((folder, k))
    if unknown:
        example = imagenet_classes()[classes.imagenet_indices[0]].wnid  # type: ignore[index]
        raise UserError(
            f"dataset {spec.kind}: {spec.root} has folder(s) that are not {label} class wnids: {few(unknown)} "
            f"(expected {len(classes)} wnid folders like {example})"
        )
    samples = collect_samples(spec.root, spec.kind, pairs, limit_per_class)
    return ImageDataset(spec.name or spec.kind, spec.kind, spec.root, classes, samples)


def index_folders(spec: DatasetSpec, limit_per_class: int | None) -> ImageDataset:
    """ImageNet-V2 layout: folders ``0`` .. ``999`` named by the ImageNet class index."""
    folders = class_folders(spec.root, spec.kind)
    bad = [f for f in folders if not (f.isdigit() and str(int(f)) == f and int(f) < 1000)]
    if bad:
        raise UserError(
            f"dataset {spec.kind}: {spec.root} has folder(s) not named by an ImageNet class index 0..999: {few(bad)}"
        )
    pairs = sorted(((f, int(f)) for f in folders), key=lambda p: p[1])
    samples = collect_samples(spec.root, spec.kind, pairs, limit_per_class)
    return ImageDataset(spec.name or spec.kind, spec.kind, spec.root, ClassSet.imagenet(), samples)
