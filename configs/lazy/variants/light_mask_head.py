"""Lightweight (depthwise-separable) mask head on the COCO R50-FPN model (lazy twin of
configs/coco/variants/light_mask_head.yaml, with the fused pooler)."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from d2_maskext.modeling.roi_heads import LightMaskHead, MaskLoss

from ..mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.roi_heads.mask_head = L(LightMaskHead)(
    input_shape=ShapeSpec(channels=256, height=14, width=14),
    num_classes="${..num_classes}",
    conv_dim=128,  # MODEL.ROI_MASK_HEAD.CONV_DIM
    num_conv=4,  # MODEL.ROI_MASK_HEAD.NUM_CONV
    conv_norm="",
    mask_loss=L(MaskLoss)(),
)
