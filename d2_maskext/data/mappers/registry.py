"""The mapper registry and ``build_mapper``: one config key, ``INPUT.MAPPER.NAME``, picks the mapper."""

from __future__ import annotations

from collections.abc import Callable

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.utils.registry import Registry

from ...utils.image_io import RAW_FORMAT
from .photometric import ColorJitter

MAPPER_REGISTRY = Registry("MAPPER")
MAPPER_REGISTRY.__doc__ = """
Dataset mappers: callables built by ``MAPPER_REGISTRY.get(name)(cfg, is_train)`` that turn a dataset dict
into the model's input dict, or return None to skip it (Detectron2's loader then samples another image).
``INPUT.MAPPER.NAME`` selects one.
"""
MAPPER_REGISTRY.register(DatasetMapper)


def build_mapper(cfg: CfgNode, is_train: bool) -> Callable[[dict], dict | None]:
    """Build the mapper named by ``cfg.INPUT.MAPPER.NAME``; refuse to ignore ``INPUT.PHOTOMETRIC`` silently, and
    Detectron2's ``DatasetMapper`` for ``RAW`` images (its reader knows 8-bit formats only)."""
    mapper_class = MAPPER_REGISTRY.get(cfg.INPUT.MAPPER.NAME)
    if cfg.INPUT.FORMAT == RAW_FORMAT and mapper_class is DatasetMapper:
        raise ValueError(
            "INPUT.FORMAT 'RAW' needs one of the plugin mappers (MaskExtDatasetMapper, LSJDatasetMapper, "
            "CopyPasteDatasetMapper): Detectron2's DatasetMapper reads 8-bit images only"
        )
    if is_train and cfg.INPUT.FORMAT == RAW_FORMAT and cfg.VIS_PERIOD > 0:
        meta_arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        if getattr(meta_arch, "visualize_training", None) is GeneralizedRCNN.visualize_training:
            raise ValueError(
                f"VIS_PERIOD {cfg.VIS_PERIOD} with INPUT.FORMAT 'RAW': {cfg.MODEL.META_ARCHITECTURE} draws 8-bit images "
                "only; use MODEL.META_ARCHITECTURE 'MaskExtRCNN' (it stretches RAW images for display) or VIS_PERIOD 0"
            )
    mapper = mapper_class(cfg, is_train)
    if is_train and cfg.INPUT.PHOTOMETRIC.ENABLED:
        augmentations = getattr(getattr(mapper, "augmentations", None), "augs", [])
        if not any(isinstance(a, ColorJitter) for a in augmentations):
            raise ValueError(
                f"INPUT.PHOTOMETRIC.ENABLED is set but mapper {cfg.INPUT.MAPPER.NAME!r} does not apply it; use one of "
                "the plugin mappers (MaskExtDatasetMapper, LSJDatasetMapper, CopyPasteDatasetMapper) or a subclass"
            )
    return mapper
