"""Mask, box and ROI head variants; importing registers them in Detectron2's registries."""

from .base import MaskExtConvUpsampleHead, MaskExtHead
from .boundary_mask_head import BoundaryMaskHead
from .double_head import DoubleConvFCHead, DoubleHeadOutputLayers
from .hires_mask_head import HighResMaskHead
from .light_mask_head import LightMaskHead
from .mask_losses import MaskLoss
from .mask_scoring import MaskIoUHead, MaskScoringROIHeads

__all__ = [
    "BoundaryMaskHead",
    "DoubleConvFCHead",
    "DoubleHeadOutputLayers",
    "HighResMaskHead",
    "LightMaskHead",
    "MaskExtConvUpsampleHead",
    "MaskExtHead",
    "MaskIoUHead",
    "MaskLoss",
    "MaskScoringROIHeads",
]
