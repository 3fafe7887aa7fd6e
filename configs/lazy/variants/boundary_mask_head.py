"""Boundary-preserving mask head (BMask R-CNN) on the COCO R50-FPN model (lazy twin of
configs/coco/variants/boundary_mask_head.yaml, with the fused pooler)."""

from detectron2.config import LazyCall as L

from d2_maskext.modeling.roi_heads import BoundaryMaskHead, MaskLoss

from ..mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.roi_heads.mask_head._target_ = BoundaryMaskHead
model.roi_heads.mask_head.num_boundary_conv = 2  # MODEL.ROI_MASK_HEAD.BOUNDARY.NUM_CONV
model.roi_heads.mask_head.boundary_loss_weight = 1.0  # MODEL.ROI_MASK_HEAD.BOUNDARY.LOSS_WEIGHT
model.roi_heads.mask_head.mask_loss = L(MaskLoss)()  # MODEL.ROI_MASK_HEAD.LOSS.*
