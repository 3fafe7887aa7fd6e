"""The demo with colour jitter after the default resize and flip (lazy twin of
configs/synthetic/mapper_photometric.yaml)."""

from ..common.augmentations import photometric_jitter
from .mask_rcnn_R18_FPN_GN_demo import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.mapper.augmentations.append(photometric_jitter())
train.output_dir = "output/mapper_photometric_lazy"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
