"""Pooler selection: Detectron2's ``ROIPooler`` or the fused multi-level RoIAlign pooler."""

from __future__ import annotations

from detectron2.modeling.poolers import ROIPooler
from torch import nn

from .fused_pooler import FusedROIPooler

POOLER_CHOICES = ("stock", "fused")


def convert_pooler(pooler: ROIPooler, choice: str) -> nn.Module:
    """Return ``pooler`` unchanged for "stock", or an equivalent ``FusedROIPooler`` for "fused"."""
    if choice not in POOLER_CHOICES:
        raise ValueError(f"MODEL.MASKEXT.POOLER must be one of {POOLER_CHOICES}, got {choice!r}")
    if choice == "stock":
        return pooler
    return FusedROIPooler.from_roi_pooler(pooler)
