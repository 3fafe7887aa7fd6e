"""``MaskExtHead``: the base of the plugin's mask heads, whose loss follows ``MODEL.ROI_MASK_HEAD.LOSS``."""

from __future__ import annotations

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead, mask_rcnn_inference
from detectron2.structures import Instances
from torch import Tensor

from ..mask_losses import MaskLoss


def check_pooled_input(head_name: str, cfg: CfgNode, input_shape: ShapeSpec | dict[str, ShapeSpec]) -> None:
    """Heads that take one pooled tensor need the ROI heads' mask pooler (a non-empty POOLER_TYPE)."""
    if not isinstance(input_shape, ShapeSpec):
        raise ValueError(
            f"{head_name} needs pooled region features: set MODEL.ROI_MASK_HEAD.POOLER_TYPE "
            f"(got {cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE!r})"
        )


def mask_head_num_classes(cfg: CfgNode) -> int:
    """Mask channels: 1 for class-agnostic masks, else one per class."""
    return 1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES


class MaskExtHead(BaseMaskRCNNHead):
    """A mask head whose loss follows ``MODEL.ROI_MASK_HEAD.LOSS``.

    Subclasses implement ``layers`` (region features -> ``(B, C, M, M)`` mask logits, traceable) and may
    override ``head_inputs`` (to pool their own features) or ``logits_and_losses`` (to add loss terms).
    """

    @configurable
    def __init__(self, *, mask_loss: MaskLoss = MaskLoss(), **kwargs):
        super().__init__(**kwargs)
        self.mask_loss = mask_loss

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec | dict[str, ShapeSpec]) -> dict:
        ret = super().from_config(cfg, input_shape)
        ret["mask_loss"] = MaskLoss.from_config(cfg)
        ret["loss_weight"] = cfg.MODEL.ROI_MASK_HEAD.LOSS.WEIGHT
        return ret

    def head_inputs(self, x: Tensor, instances: list[Instances]) -> Tensor:
        """What ``layers`` consumes, from what the ROI heads passes (its pooled features by default)."""
        return x

    def logits_and_losses(self, x: Tensor, instances: list[Instances]) -> tuple[Tensor, dict[str, Tensor]]:
        """Training step: mask logits and the weighted loss terms."""
        logits = self.layers(self.head_inputs(x, instances))
        return logits, self.weighted(self.mask_loss(logits, instances))

    def weighted(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: value * self.loss_weight for name, value in losses.items()}

    def forward(self, x: Tensor, instances: list[Instances]):
        if self.training:
            return self.logits_and_losses(x, instances)[1]
        mask_rcnn_inference(self.layers(self.head_inputs(x, instances)), instances)
        return instances
