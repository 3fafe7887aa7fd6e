"""Model components; importing this package registers them in Detectron2's registries."""

from . import roi_heads
from .meta_arch import MaskExtRCNN
from .roi_heads import MaskExtROIHeads

__all__ = ["MaskExtRCNN", "MaskExtROIHeads", "roi_heads"]
