"""Fine-tune the COCO R50-FPN 3x model with the boundary-preserving mask head: the stock mask layers load from COCO, the boundary branch starts
fresh (its fusion conv at zero, so it starts as the stock head) (lazy twin of configs/finetune/boundary_mask_head.yaml)."""

from ..variants.boundary_mask_head import dataloader, model, optimizer, train
from .mask_rcnn_R_50_FPN import fine_tune

lr_multiplier = fine_tune(model, dataloader, optimizer, train)
train.output_dir = "output/finetune_lazy/boundary_mask_head"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
