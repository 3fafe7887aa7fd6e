"""Every d2_maskext config key, with its default, in one place.

``add_maskext_config(cfg)`` adds the keys to *that* cfg only (Detectron2's global defaults are never
touched), so stock configs keep their exact behaviour unless they select a plugin component.
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_maskext_config(cfg: CN) -> CN:
    """Add all plugin keys to ``cfg`` (idempotent) and return it."""
    if cfg.get("MASKEXT_CONFIG_ADDED", False):
        return cfg
    _add_pooler_config(cfg)
    _add_head_config(cfg)
    _add_data_config(cfg)
    _add_eval_config(cfg)
    _add_reliability_config(cfg)
    cfg.MASKEXT_CONFIG_ADDED = True
    return cfg


def _add_pooler_config(cfg: CN) -> None:
    """RoIAlign implementation used by ``MaskExtROIHeads`` (issue: RoIAlign extension)."""
    cfg.MODEL.MASKEXT = CN()
    # "stock": Detectron2's ROIPooler (loop over FPN levels); "fused": one-call multi-level RoIAlign.
    cfg.MODEL.MASKEXT.POOLER = "stock"


def _add_head_config(cfg: CN) -> None:
    """Head variants (Mask Scoring, boundary, high-resolution, lightweight, Double-Head) and mask losses."""


def _add_data_config(cfg: CN) -> None:
    """Built-in synthetic dataset, declared datasets, mapper choice and augmentation options."""
    cfg.DATASETS.SYNTHETIC = CN()
    # Where generated images and annotations are cached ("" = $D2MX_DATA or ./datasets/maskext_synth).
    cfg.DATASETS.SYNTHETIC.ROOT = ""
    cfg.INPUT.MAPPER = CN()
    # Name in d2_maskext's MAPPER_REGISTRY; "DatasetMapper" is Detectron2's own.
    cfg.INPUT.MAPPER.NAME = "DatasetMapper"


def _add_eval_config(cfg: CN) -> None:
    """Evaluation and report options."""


def _add_reliability_config(cfg: CN) -> None:
    """Fault handling and untrusted-input options."""
