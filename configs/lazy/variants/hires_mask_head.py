"""High-resolution (56x56) mask head on the COCO R50-FPN model (lazy twin of
configs/coco/variants/hires_mask_head.yaml): the head pools its own features, coarse from every level at
14x14 and fine from p2 at 28x28, so the ROI heads get no mask pooler."""

from detectron2.config import LazyCall as L

from d2_maskext.layers import FusedROIPooler
from d2_maskext.modeling.roi_heads import HighResMaskHead, MaskLoss

from ..mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.roi_heads.mask_pooler = None
model.roi_heads.mask_head._target_ = HighResMaskHead
model.roi_heads.mask_head.in_features = "${..mask_in_features}"
model.roi_heads.mask_head.fine_feature = "p2"  # MODEL.ROI_MASK_HEAD.HIRES.FINE_FEATURE
model.roi_heads.mask_head.fine_channels = 256
model.roi_heads.mask_head.coarse_pooler = L(FusedROIPooler)(
    output_size=14, scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32), sampling_ratio=0, pooler_type="ROIAlignV2"
)
model.roi_heads.mask_head.fine_pooler = L(FusedROIPooler)(
    output_size=28, scales=(1.0 / 4,), sampling_ratio=0, pooler_type="ROIAlignV2"
)
model.roi_heads.mask_head.num_refine_conv = 2  # MODEL.ROI_MASK_HEAD.HIRES.NUM_CONV
model.roi_heads.mask_head.mask_loss = L(MaskLoss)()
