"""Fine-tune the COCO R50-FPN 3x model with Mask Scoring R-CNN: every COCO layer loads, the MaskIoU head starts fresh (lazy twin of configs/finetune/mask_scoring.yaml)."""

from ..variants.mask_scoring import dataloader, model, optimizer, train
from .mask_rcnn_R_50_FPN import fine_tune

lr_multiplier = fine_tune(model, dataloader, optimizer, train)
train.output_dir = "output/finetune_lazy/mask_scoring"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
