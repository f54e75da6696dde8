"""ImageNet-1k class metadata (from timm and open_clip) and its WordNet hierarchy."""

from clipcompare.imagenet.classes import (
    IMAGENET_A_INDICES,
    IMAGENET_R_INDICES,
    ImageNetClass,
    imagenet_classes,
    index_of_wnid,
)
from clipcompare.imagenet.wordnet import (
    Synset,
    class_distance,
    class_distance_matrix,
    classes_under,
    hypernym_paths,
    lowest_common_ancestor,
    synset,
    tree_distance,
)

__all__ = [
    "IMAGENET_A_INDICES",
    "IMAGENET_R_INDICES",
    "ImageNetClass",
    "imagenet_classes",
    "index_of_wnid",
    "Synset",
    "class_distance",
    "class_distance_matrix",
    "classes_under",
    "hypernym_paths",
    "lowest_common_ancestor",
    "synset",
    "tree_distance",
]
