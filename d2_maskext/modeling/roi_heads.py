"""ROI heads that can swap Detectron2's per-level ``ROIPooler`` for the fused multi-level pooler."""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

from ..layers.pooler import convert_pooler


@ROI_HEADS_REGISTRY.register()
class MaskExtROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose box and mask poolers follow ``MODEL.MASKEXT.POOLER``.

    The poolers have no parameters, so checkpoints are interchangeable with ``StandardROIHeads``.
    """

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_pooler"] = convert_pooler(ret["box_pooler"], cfg.MODEL.MASKEXT.POOLER)
        return ret

    @classmethod
    def _init_mask_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        ret = super()._init_mask_head(cfg, input_shape)
        if ret.get("mask_pooler") is not None:
            ret["mask_pooler"] = convert_pooler(ret["mask_pooler"], cfg.MODEL.MASKEXT.POOLER)
        return ret
