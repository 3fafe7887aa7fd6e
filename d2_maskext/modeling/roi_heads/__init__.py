"""ROI heads and the box, mask and MaskIoU heads they run; importing registers them in Detectron2's
registries (``ROI_HEADS_REGISTRY``, ``ROI_BOX_HEAD_REGISTRY``, ``ROI_MASK_HEAD_REGISTRY``)."""

from .double_head import DoubleConvFCHead, DoubleHeadOutputLayers
from .mask_heads import BoundaryMaskHead, HighResMaskHead, LightMaskHead, MaskExtConvUpsampleHead, MaskExtHead
from .mask_losses import MaskLoss
from .maskiou_head import MaskIoUHead
from .roi_heads import BoxHeadWithPredictor, MaskExtROIHeads, MaskScoringROIHeads

__all__ = [
    "BoundaryMaskHead",
    "BoxHeadWithPredictor",
    "DoubleConvFCHead",
    "DoubleHeadOutputLayers",
    "HighResMaskHead",
    "LightMaskHead",
    "MaskExtConvUpsampleHead",
    "MaskExtHead",
    "MaskExtROIHeads",
    "MaskIoUHead",
    "MaskLoss",
    "MaskScoringROIHeads",
]
