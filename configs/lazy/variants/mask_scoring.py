"""Mask Scoring R-CNN on the COCO R50-FPN model (lazy twin of configs/coco/variants/mask_scoring.yaml, with the
fused pooler): a MaskIoU head rescores each mask by its predicted IoU."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from d2_maskext.modeling.roi_heads import MaskIoUHead, MaskScoringROIHeads

from ..mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.roi_heads._target_ = MaskScoringROIHeads
model.roi_heads.maskiou_head = L(MaskIoUHead)(
    input_shape=ShapeSpec(channels=256, height=14, width=14),  # the mask pooler's output
    num_classes="${..num_classes}",
    conv_dims=[256, 256, 256, 256],  # MODEL.ROI_MASKIOU_HEAD.CONV_DIM x NUM_CONV
    fc_dims=[1024, 1024],  # FC_DIM x NUM_FC
    conv_norm="",
    loss_weight=1.0,
)
