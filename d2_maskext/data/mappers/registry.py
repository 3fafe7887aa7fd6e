"""The mapper registry and ``build_mapper``: one config key, ``INPUT.MAPPER.NAME``, picks the mapper."""

from __future__ import annotations

from collections.abc import Callable

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper
from detectron2.utils.registry import Registry

MAPPER_REGISTRY = Registry("MAPPER")
MAPPER_REGISTRY.__doc__ = """
Dataset mappers: callables built by ``MAPPER_REGISTRY.get(name)(cfg, is_train)`` that turn a dataset dict
into the model's input dict, or return None to skip it (Detectron2's loader then samples another image).
``INPUT.MAPPER.NAME`` selects one.
"""
MAPPER_REGISTRY.register(DatasetMapper)


def build_mapper(cfg: CfgNode, is_train: bool) -> Callable[[dict], dict | None]:
    """Build the mapper named by ``cfg.INPUT.MAPPER.NAME``."""
    return MAPPER_REGISTRY.get(cfg.INPUT.MAPPER.NAME)(cfg, is_train)
