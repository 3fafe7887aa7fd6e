"""RoIAlign op (compiled, with a PyTorch fallback), poolers, mask pasting and fused convolutions."""

from ._ext import HAS_C_EXT
from .fused_conv import FusedConv2d, fuse_convolutions
from .fused_pooler import POOLER_CHOICES, FusedROIPooler, convert_pooler
from .roi_align import multilevel_roi_align, reference_roi_align, roi_align

__all__ = [
    "HAS_C_EXT",
    "POOLER_CHOICES",
    "FusedConv2d",
    "FusedROIPooler",
    "convert_pooler",
    "fuse_convolutions",
    "multilevel_roi_align",
    "reference_roi_align",
    "roi_align",
]
