"""Model components; importing this package registers them in Detectron2's registries."""

from . import heads
from .meta_arch import MaskExtRCNN
from .roi_heads import MaskExtROIHeads

__all__ = ["MaskExtRCNN", "MaskExtROIHeads", "heads"]
