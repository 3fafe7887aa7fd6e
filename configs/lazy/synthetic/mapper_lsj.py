"""The demo with large-scale jitter (lazy twin of configs/synthetic/mapper_lsj.yaml): resize by 0.1-2.0 of
256x256, crop or pad to 256x256, flip; boxes recomputed from the masks."""

from detectron2.config import LazyCall as L

from d2_maskext.data.mappers import LSJDatasetMapper

from ..common.augmentations import lsj_augmentations
from .mask_rcnn_R18_FPN_GN_demo import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.mapper = L(LSJDatasetMapper)(
    is_train=True,
    augmentations=lsj_augmentations(256),
    image_format="BGR",
    use_instance_mask=True,
    instance_mask_format="bitmask",
    recompute_boxes=True,
)
train.output_dir = "output/mapper_lsj_lazy"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
