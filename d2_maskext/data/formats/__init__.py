"""Dataset formats: COCO JSON, LabelMe folders, CVAT for images XML, instance-mask PNG folders, instance label
maps, VOC instance PNGs and YOLO labels.

Each format is a loader registered with ``@dataset_format(name)``; ``register_dataset`` selects one by
name. Importing this package registers the built-in formats.
"""

from __future__ import annotations

from ...utils.image_io import ImageReadError, read_image
from . import coco, cvat, label_maps, labelme, mask_png, voc, yolo  # noqa: F401  (registration happens on import)
from .base import DatasetSource, LoadedDataset, dataset_format, format_names, load_dataset
from .problems import PROBLEM_KINDS, DatasetError, ProblemLog, Severity

__all__ = [
    "PROBLEM_KINDS",
    "DatasetError",
    "DatasetSource",
    "ImageReadError",
    "LoadedDataset",
    "ProblemLog",
    "Severity",
    "dataset_format",
    "format_names",
    "load_dataset",
    "read_image",
]
