"""COCO Mask R-CNN R50-FPN, 1x schedule: Detectron2's lazy baseline (``common/models/mask_rcnn_fpn.py``)
through the plugin's ROI heads with the fused multi-level RoIAlign pooler, the plugin's mapper, evaluator,
report and checkpointer. Same parameters as Detectron2's model, so checkpoints are interchangeable.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/mask_rcnn_R_50_FPN_1x.py
"""

from detectron2.model_zoo import get_config

from d2_maskext.data.mappers import MaskExtDatasetMapper
from d2_maskext.layers import FusedROIPooler
from d2_maskext.modeling import MaskExtROIHeads

from .common.evaluation import evaluator as _evaluator
from .common.train import train

model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up.freeze_at = 2  # as MODEL.BACKBONE.FREEZE_AT: stem and res2 stay ImageNet's
model.roi_heads._target_ = MaskExtROIHeads
model.roi_heads.box_pooler._target_ = FusedROIPooler
model.roi_heads.mask_pooler._target_ = FusedROIPooler

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper._target_ = MaskExtDatasetMapper  # Detectron2's DatasetMapper, skips unreadable images
dataloader.test.mapper._target_ = MaskExtDatasetMapper
dataloader.evaluator = _evaluator

optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x

train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.max_iter = 90000
