"""``MaskExtConvUpsampleHead``: Detectron2's conv-upsample mask head with the plugin's loss options."""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead

from .base import MaskExtHead, check_pooled_input


@ROI_MASK_HEAD_REGISTRY.register()
class MaskExtConvUpsampleHead(MaskExtHead, MaskRCNNConvUpsampleHead):
    """Detectron2's ``MaskRCNNConvUpsampleHead`` (same layers and parameter names) with the loss options."""

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec | dict[str, ShapeSpec]) -> dict:
        check_pooled_input(cls.__name__, cfg, input_shape)
        return super().from_config(cfg, input_shape)
