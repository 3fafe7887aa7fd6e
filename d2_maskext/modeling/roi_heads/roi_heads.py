"""The plugin's ROI heads: ``MaskExtROIHeads`` (pooler choice, box heads with their own predictor, checked
mask loss options) and ``MaskScoringROIHeads`` (Mask Scoring R-CNN on top of it)."""

import inspect

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead, mask_rcnn_loss
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Instances
from torch import Tensor, nn

from ...layers.fused_pooler import convert_pooler
from .mask_heads.base import MaskExtHead
from .mask_losses import options_changing_stock_loss, select_mask_targets
from .maskiou_head import MaskIoUHead


class BoxHeadWithPredictor(nn.Module):
    """A box head whose output only its own predictor can read (e.g. two branches side by side).

    ``MaskExtROIHeads`` builds the predictor from :meth:`build_box_predictor` instead of Detectron2's
    ``FastRCNNOutputLayers``.
    """

    def build_box_predictor(self, cfg: CfgNode) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must build its box predictor")


@ROI_HEADS_REGISTRY.register()
class MaskExtROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose box and mask poolers follow ``MODEL.MASKEXT.POOLER``.

    The poolers have no parameters, so checkpoints are interchangeable with ``StandardROIHeads``. A
    :class:`BoxHeadWithPredictor` gets its own predictor. ``MODEL.ROI_MASK_HEAD.LOSS`` options that the
    configured mask head would ignore (Detectron2's heads keep their own loss) are refused.
    """

    # Constants for TorchScript, as Detectron2's export patch declares them for StandardROIHeads, so that
    # disabled branches are compiled away. Scripting reads a class's own annotations only, hence
    # ``__init_subclass__``. (No ``from __future__ import annotations`` here: TorchScript needs the objects.)
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.__annotations__ = {**MaskExtROIHeads.__annotations__, **inspect.get_annotations(cls)}

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_pooler"] = convert_pooler(ret["box_pooler"], cfg.MODEL.MASKEXT.POOLER)
        if isinstance(ret["box_head"], BoxHeadWithPredictor):
            ret["box_predictor"] = ret["box_head"].build_box_predictor(cfg)
        return ret

    @classmethod
    def _init_mask_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        """Detectron2's mask branch (an empty ``POOLER_TYPE`` gives the head the feature maps to pool itself)."""
        ret = super()._init_mask_head(cfg, input_shape)
        if ret.get("mask_pooler") is not None:
            ret["mask_pooler"] = convert_pooler(ret["mask_pooler"], cfg.MODEL.MASKEXT.POOLER)
        changed = options_changing_stock_loss(cfg)
        if "mask_head" in ret and not isinstance(ret["mask_head"], MaskExtHead) and changed:
            name = cfg.MODEL.ROI_MASK_HEAD.NAME
            fix = (
                "set MODEL.ROI_MASK_HEAD.NAME to MaskExtConvUpsampleHead (the same network with the loss options)"
                if name == "MaskRCNNConvUpsampleHead"
                else "use one of the plugin's mask heads"
            )
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.NAME {name!r} keeps Detectron2's mask loss and would ignore "
                f"MODEL.ROI_MASK_HEAD.{', '.join(changed)}: {fix}"
            )
        return ret


def mask_logits_and_losses(
    head: BaseMaskRCNNHead, x: Tensor, instances: list[Instances]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Training logits and losses of any mask head: a :class:`MaskExtHead`'s own, else Detectron2's loss."""
    if isinstance(head, MaskExtHead):
        return head.logits_and_losses(x, instances)
    logits = head.layers(x)
    return logits, {"loss_mask": mask_rcnn_loss(logits, instances, head.vis_period) * head.loss_weight}


@ROI_HEADS_REGISTRY.register()
class MaskScoringROIHeads(MaskExtROIHeads):
    """``MaskExtROIHeads`` (so ``MODEL.MASKEXT.POOLER`` still applies) with a :class:`MaskIoUHead`.

    Works with any mask head that takes pooled features; the MaskIoU head reads the mask pooler's output.
    """

    @configurable
    def __init__(self, *, maskiou_head: MaskIoUHead, **kwargs):
        super().__init__(**kwargs)
        self.maskiou_head = maskiou_head

    @classmethod
    def _init_mask_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        if not cfg.MODEL.MASK_ON:
            raise ValueError("MaskScoringROIHeads scores masks: set MODEL.MASK_ON True")
        head = cfg.MODEL.ROI_MASK_HEAD
        if not head.POOLER_TYPE:
            raise ValueError(
                "MaskScoringROIHeads needs pooled mask features: set MODEL.ROI_MASK_HEAD.POOLER_TYPE and a mask "
                f"head that takes them (NAME is {head.NAME!r}, POOLER_TYPE '')"
            )
        ret = super()._init_mask_head(cfg, input_shape)
        resolution = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
        channels = input_shape[ret["mask_in_features"][0]].channels
        ret["maskiou_head"] = MaskIoUHead(cfg, ShapeSpec(channels=channels, height=resolution, width=resolution))
        return ret

    def _forward_mask(self, features: dict[str, Tensor], instances: list[Instances]):
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        boxes = [i.proposal_boxes if self.training else i.pred_boxes for i in instances]
        region_features = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        if self.training:
            logits, losses = mask_logits_and_losses(self.mask_head, region_features, instances)
            losses.update(self.maskiou_head.losses(region_features, select_mask_targets(logits, instances)))
            return losses
        instances = self.mask_head(region_features, instances)
        self._rescore(region_features, instances)
        return instances

    def _rescore(self, region_features: Tensor, instances: list[Instances]) -> None:
        """Add ``pred_maskiou`` and multiply it into ``scores``."""
        mask_probs = cat([i.pred_masks for i in instances])
        classes = cat([i.pred_classes for i in instances])
        maskiou = self.maskiou_head(region_features, mask_probs, classes).clamp(0.0, 1.0)
        for instances_per_image, iou in zip(instances, maskiou.split([len(i) for i in instances])):
            instances_per_image.pred_maskiou = iou
            instances_per_image.scores = instances_per_image.scores * iou
