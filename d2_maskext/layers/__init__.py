"""RoIAlign op (compiled, with a PyTorch fallback) and poolers."""

from ._ext import HAS_C_EXT
from .fused_pooler import FusedROIPooler
from .pooler import POOLER_CHOICES, convert_pooler
from .roi_align import multilevel_roi_align, reference_roi_align, roi_align

__all__ = [
    "HAS_C_EXT",
    "POOLER_CHOICES",
    "FusedROIPooler",
    "convert_pooler",
    "multilevel_roi_align",
    "reference_roi_align",
    "roi_align",
]
