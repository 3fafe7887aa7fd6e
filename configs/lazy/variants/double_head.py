"""Double-Head box head on the COCO R50-FPN model (lazy twin of configs/coco/variants/double_head.yaml, with
the fused pooler): classes from the fc branch, boxes from a residual conv branch."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from d2_maskext.modeling.roi_heads import DoubleConvFCHead, DoubleHeadOutputLayers

from ..mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.roi_heads.box_head._target_ = DoubleConvFCHead
model.roi_heads.box_head.conv_norm = "GN"  # MODEL.ROI_BOX_HEAD.NORM, used by the conv branch
model.roi_heads.box_head.reg_conv_dim = 1024  # MODEL.ROI_BOX_HEAD.DOUBLE_HEAD.CONV_DIM
model.roi_heads.box_head.reg_num_blocks = 4  # MODEL.ROI_BOX_HEAD.DOUBLE_HEAD.NUM_BLOCKS
model.roi_heads.box_predictor._target_ = DoubleHeadOutputLayers
model.roi_heads.box_predictor.reg_input_shape = L(ShapeSpec)(channels="${...box_head.reg_conv_dim}")
