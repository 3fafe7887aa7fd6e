"""The MaskIoU head of Mask Scoring R-CNN (Huang et al., CVPR 2019): it scores each mask by its predicted
IoU with the object.

The head regresses, from the region features and the predicted mask, the IoU between the binarized
predicted mask and the ground-truth mask target (L2 loss). At inference the detection score becomes
``classification score x predicted mask IoU`` (``MaskScoringROIHeads``), so poorly segmented detections
rank lower.
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from fvcore.nn import weight_init
from torch import Tensor, nn
from torch.nn import functional as F

from .head_layers import conv3x3_norm_relu
from .mask_losses import MaskTargets


def mask_iou_targets(mask_logits: Tensor, gt_masks: Tensor) -> Tensor:
    """IoU of ``(B, M, M)`` predicted masks binarized at probability 0.5 with the ``(B, M, M)`` GT targets.

    Two empty masks have IoU 0: there is nothing to score.
    """
    predicted = mask_logits > 0
    gt = gt_masks > 0.5
    intersection = (predicted & gt).flatten(1).sum(1)
    union = (predicted | gt).flatten(1).sum(1)
    return intersection.float() / union.clamp(min=1).float()


class MaskIoUHead(nn.Module):
    """Convs (the last with stride 2) and fcs over [region features, max-pooled mask probabilities]."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: list[int],
        fc_dims: list[int],
        conv_norm: str = "",
        loss_weight: float = 1.0,
    ):
        super().__init__()
        self.resolution = input_shape.height
        self.loss_weight = loss_weight
        self.convs = nn.Sequential()
        channels, side = input_shape.channels + 1, input_shape.height
        for k, dim in enumerate(conv_dims):
            stride = 2 if k == len(conv_dims) - 1 else 1
            self.convs.add_module(f"conv{k + 1}", conv3x3_norm_relu(channels, dim, conv_norm, stride))
            channels, side = dim, (side - 1) // stride + 1
        self.fcs = nn.Sequential(nn.Flatten())
        features = channels * side * side
        for k, dim in enumerate(fc_dims):
            fc = nn.Linear(features, dim)
            weight_init.c2_xavier_fill(fc)
            self.fcs.add_module(f"fc{k + 1}", fc)
            self.fcs.add_module(f"fc_relu{k + 1}", nn.ReLU())
            features = dim
        self.maskiou = nn.Linear(features, num_classes)
        nn.init.normal_(self.maskiou.weight, std=0.01)
        nn.init.zeros_(self.maskiou.bias)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        head = cfg.MODEL.ROI_MASKIOU_HEAD
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "conv_dims": [head.CONV_DIM] * head.NUM_CONV,
            "fc_dims": [head.FC_DIM] * head.NUM_FC,
            "conv_norm": head.NORM,
            "loss_weight": head.LOSS_WEIGHT,
        }

    def forward(self, region_features: Tensor, mask_probs: Tensor, classes: Tensor) -> Tensor:
        """Predicted IoU ``(B,)`` of each ``(1, M, M)`` mask with its object, for its class."""
        mask = F.adaptive_max_pool2d(mask_probs, self.resolution)
        scores = self.maskiou(self.fcs(self.convs(torch.cat([region_features, mask], dim=1))))
        return scores.gather(1, classes[:, None])[:, 0]

    def losses(self, region_features: Tensor, targets: MaskTargets) -> dict[str, Tensor]:
        """L2 between the predicted IoU and the IoU of the (detached) predicted mask with its GT target."""
        logits = targets.logits.detach()
        predicted = self(region_features, logits.sigmoid()[:, None], targets.classes)
        if predicted.numel() == 0:
            return {"loss_maskiou": predicted.sum() * 0}
        loss = F.mse_loss(predicted, mask_iou_targets(logits, targets.masks))
        return {"loss_maskiou": self.loss_weight * loss}
