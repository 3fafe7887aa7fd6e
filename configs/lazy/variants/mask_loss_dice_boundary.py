"""Stock mask head with Dice and boundary-weighted BCE mask losses on the COCO R50-FPN model (lazy twin of
configs/coco/variants/mask_loss_dice_boundary.yaml, with the fused pooler)."""

from detectron2.config import LazyCall as L

from d2_maskext.modeling.roi_heads import MaskExtConvUpsampleHead, MaskLoss

from ..mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.roi_heads.mask_head._target_ = MaskExtConvUpsampleHead
model.roi_heads.mask_head.mask_loss = L(MaskLoss)(dice_weight=1.0, boundary_bce_weight=2.0, boundary_width=1)
