"""Drawing helpers built on Detectron2's ``Visualizer``."""

from __future__ import annotations

from ..utils.display import to_display_rgb
from .panels import draw_coco_instances, read_image_or_blank, side_by_side

__all__ = ["draw_coco_instances", "read_image_or_blank", "side_by_side", "to_display_rgb"]
