"""Dataset mappers chosen by ``INPUT.MAPPER.NAME``; importing registers them in ``MAPPER_REGISTRY``.

* ``MaskExtDatasetMapper`` (default): Detectron2's ``DatasetMapper``, same outputs, faster, fault tolerant;
* ``LSJDatasetMapper``: large-scale jitter (resize 0.1-2.0, fixed-size crop, flip; boxes from masks);
* ``CopyPasteDatasetMapper``: LSJ plus Simple Copy-Paste from another sampled training image;
* ``DatasetMapper``: Detectron2's own, unchanged.

``INPUT.PHOTOMETRIC`` adds colour jitter to any of the plugin mappers.
"""

from __future__ import annotations

from .copy_paste import CopyPasteDatasetMapper, paste_instances
from .default import MaskExtDatasetMapper
from .lsj import LSJDatasetMapper
from .photometric import ColorJitter
from .registry import MAPPER_REGISTRY, build_mapper

__all__ = [
    "MAPPER_REGISTRY",
    "ColorJitter",
    "CopyPasteDatasetMapper",
    "LSJDatasetMapper",
    "MaskExtDatasetMapper",
    "build_mapper",
    "paste_instances",
]
