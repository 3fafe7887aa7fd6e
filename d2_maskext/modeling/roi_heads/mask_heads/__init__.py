"""Mask heads, one module per family; importing registers them in ``ROI_MASK_HEAD_REGISTRY``."""

from .base import MaskExtHead
from .boundary import BoundaryMaskHead
from .conv_upsample import MaskExtConvUpsampleHead
from .high_res import HighResMaskHead
from .lightweight import LightMaskHead

__all__ = ["BoundaryMaskHead", "HighResMaskHead", "LightMaskHead", "MaskExtConvUpsampleHead", "MaskExtHead"]
