"""Mask loss options shared by every plugin mask head: loss weight, Dice, boundary-weighted BCE.

Targets are built exactly like Detectron2's ``mask_rcnn_loss`` (``gt_masks.crop_and_resize`` of each
foreground proposal, the channel of its GT class unless masks are class-agnostic), once per training step
and shared by every loss term, so with the default options the loss equals Detectron2's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from detectron2.config import CfgNode
from detectron2.layers import cat
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor
from torch.nn import functional as F


class MaskTargets(NamedTuple):
    """Per foreground proposal: the logits of its GT class, its GT mask target and its GT class."""

    logits: Tensor  # (B, M, M)
    masks: Tensor  # (B, M, M) float in {0, 1}
    classes: Tensor  # (B,) int64


def rasterized_mask_targets(instances: Instances, side: int) -> Tensor:
    """``gt_masks`` cropped to each proposal box at ``side x side``, computed once per training step.

    The result is kept on ``instances`` (this step's foreground proposals), so the mask loss, the boundary
    branch and the MaskIoU head share one rasterization instead of redoing ``crop_and_resize`` each.
    """
    field = f"gt_mask_targets_{side}"
    if not instances.has(field):
        instances.set(field, instances.gt_masks.crop_and_resize(instances.proposal_boxes.tensor, side))
    return instances.get(field)


def select_mask_targets(pred_mask_logits: Tensor, instances: list[Instances]) -> MaskTargets:
    """Pair ``(B, C, M, M)`` logits (C = 1 when class-agnostic) with Detectron2's rasterized mask targets."""
    side = pred_mask_logits.size(2)
    if pred_mask_logits.size(3) != side:
        raise ValueError(f"mask predictions must be square, got {tuple(pred_mask_logits.shape)}")
    labelled = [i for i in instances if len(i) > 0]
    if not labelled:
        empty = pred_mask_logits[:, 0]
        return MaskTargets(empty, empty.detach().clone(), torch.zeros(0, dtype=torch.int64, device=empty.device))
    classes = cat([i.gt_classes.to(dtype=torch.int64) for i in labelled])
    gt = cat([rasterized_mask_targets(i, side) for i in labelled])
    gt = gt.to(device=pred_mask_logits.device)
    masks = (gt if gt.dtype == torch.bool else gt > 0.5).to(torch.float32)
    pred_mask_logits = pred_mask_logits.float()  # losses are float32 under autocast too
    if pred_mask_logits.size(1) == 1:
        logits = pred_mask_logits[:, 0]
    else:
        logits = pred_mask_logits[torch.arange(len(classes), device=classes.device), classes]
    return MaskTargets(logits, masks, classes)


def mask_boundary(masks: Tensor, width: int = 1) -> Tensor:
    """Inner boundary of ``(B, M, M)`` binary masks: foreground pixels with a background pixel at most
    ``width`` pixels away (8-connected). Edges are replicated, so the crop border is not a boundary."""
    if masks.numel() == 0:
        return masks.clone()
    background = F.pad((1.0 - masks.float())[:, None], (width,) * 4, mode="replicate")
    near_background = F.max_pool2d(background, kernel_size=2 * width + 1, stride=1)[:, 0]
    return masks.float() * near_background


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over instances of ``1 - Dice(sigmoid(logits), targets)``; robust to small or thin objects."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (probs * targets).sum(1) + 1.0
    denominator = probs.sum(1) + targets.sum(1) + 1.0
    return (1 - numerator / denominator).mean()


def boundary_weighted_bce(logits: Tensor, targets: Tensor, boundary_weight: float, width: int) -> Tensor:
    """BCE with weight ``1 + boundary_weight`` on GT boundary pixels, normalised by the total weight."""
    weights = 1.0 + boundary_weight * mask_boundary(targets, width)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (bce * weights).sum() / weights.sum()


def _log_mask_accuracy(targets: MaskTargets) -> None:
    """Same training-accuracy scalar Detectron2's mask loss logs (threshold sigmoid(0) = 0.5)."""
    correct = (targets.logits > 0) == (targets.masks > 0.5)
    get_event_storage().put_scalar("mask_rcnn/accuracy", correct.float().mean().item())


@dataclass(frozen=True)
class MaskLoss:
    """The mask loss configured by ``MODEL.ROI_MASK_HEAD.LOSS``; ``LOSS.WEIGHT`` is applied by the head."""

    dice_weight: float = 0.0
    boundary_bce_weight: float = 0.0
    boundary_width: int = 1

    @classmethod
    def from_config(cls, cfg: CfgNode) -> MaskLoss:
        loss = cfg.MODEL.ROI_MASK_HEAD.LOSS
        if loss.BOUNDARY_WIDTH < 1:
            raise ValueError(f"MODEL.ROI_MASK_HEAD.LOSS.BOUNDARY_WIDTH must be >= 1, got {loss.BOUNDARY_WIDTH}")
        return cls(loss.DICE_WEIGHT, loss.BOUNDARY_BCE_WEIGHT, loss.BOUNDARY_WIDTH)

    def __call__(self, pred_mask_logits: Tensor, instances: list[Instances]) -> dict[str, Tensor]:
        targets = select_mask_targets(pred_mask_logits, instances)
        if targets.masks.numel() == 0:
            zero = pred_mask_logits.sum() * 0
            return {"loss_mask": zero, **({"loss_mask_dice": zero} if self.dice_weight > 0 else {})}
        _log_mask_accuracy(targets)
        if self.boundary_bce_weight > 0:
            bce = boundary_weighted_bce(targets.logits, targets.masks, self.boundary_bce_weight, self.boundary_width)
        else:
            bce = F.binary_cross_entropy_with_logits(targets.logits, targets.masks)
        losses = {"loss_mask": bce}
        if self.dice_weight > 0:
            losses["loss_mask_dice"] = self.dice_weight * dice_loss(targets.logits, targets.masks)
        return losses


def options_changing_stock_loss(cfg: CfgNode) -> list[str]:
    """The ``MODEL.ROI_MASK_HEAD.LOSS`` keys set so that the loss is no longer Detectron2's plain BCE.

    Heads that compute Detectron2's own loss would ignore these keys; ``BOUNDARY_WIDTH`` only matters
    together with a boundary term, so it is not listed on its own.
    """
    loss = cfg.MODEL.ROI_MASK_HEAD.LOSS
    neutral = {"WEIGHT": 1.0, "DICE_WEIGHT": 0.0, "BOUNDARY_BCE_WEIGHT": 0.0}
    return [f"LOSS.{key} {loss[key]!r}" for key, value in neutral.items() if loss[key] != value]
