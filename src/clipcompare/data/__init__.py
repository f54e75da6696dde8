"""Datasets named on the command line as ``--dataset KIND=PATH``.

Kinds (see :data:`DATASET_KINDS`): ``imagenet``, ``imagenet-v2``, ``imagenet-sketch``, ``imagenet-r``,
``imagenet-a``, ``folder`` (``folder=PATH[:MAPFILE]``), ``wds`` (CLIP_benchmark's webdatasets,
``wds=PATH[:SPLIT]``, :mod:`clipcompare.data.wds`) and ``objectnet`` (:mod:`clipcompare.data.objectnet`). Each scanned :class:`ImageDataset` carries
its :class:`~clipcompare.classes.ClassSet` and ``(path, target)`` samples.
"""

from clipcompare.data.base import IMAGE_EXTENSIONS, DatasetSpec, ImageDataset, Sample, is_image_file
from clipcompare.data.registry import DATASET_KINDS, build_dataset, load_datasets, name_datasets, parse_dataset_arg

__all__ = [
    "DATASET_KINDS",
    "IMAGE_EXTENSIONS",
    "DatasetSpec",
    "ImageDataset",
    "Sample",
    "build_dataset",
    "is_image_file",
    "load_datasets",
    "name_datasets",
    "parse_dataset_arg",
]
