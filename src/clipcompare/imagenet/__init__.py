"""ImageNet-1k class metadata (from timm and open_clip) and its WordNet hierarchy."""

from clipcompare.imagenet.classes import (
    IMAGENET_A_INDICES,
    IMAGENET_R_INDICES,
    ImageNetClass,
    imagenet_classes,
    index_of_wnid,
)

__all__ = [
    "IMAGENET_A_INDICES",
    "IMAGENET_R_INDICES",
    "ImageNetClass",
    "imagenet_classes",
    "index_of_wnid",
]
