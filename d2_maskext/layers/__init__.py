"""RoIAlign op (compiled, with a PyTorch fallback), poolers, mask pasting and folded frozen batch norm."""

from ._ext import HAS_C_EXT
from .frozen_bn_conv import FrozenBNConv2d, fold_frozen_batchnorm
from .fused_pooler import FusedROIPooler
from .pooler import POOLER_CHOICES, convert_pooler
from .roi_align import multilevel_roi_align, reference_roi_align, roi_align

__all__ = [
    "HAS_C_EXT",
    "POOLER_CHOICES",
    "FrozenBNConv2d",
    "FusedROIPooler",
    "convert_pooler",
    "fold_frozen_batchnorm",
    "multilevel_roi_align",
    "reference_roi_align",
    "roi_align",
]
