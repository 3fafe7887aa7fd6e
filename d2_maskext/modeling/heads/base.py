"""Common base of the plugin's mask heads, and the stock conv-upsample head with the plugin's loss options."""

from __future__ import annotations

import copy

import fvcore.nn.weight_init as weight_init
from detectron2.config import CfgNode, configurable, get_cfg
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    BaseMaskRCNNHead,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Instances
from torch import Tensor, nn

from ...config import add_maskext_config
from .mask_losses import MaskLoss


def conv3x3_norm_relu(in_channels: int, out_channels: int, norm: str, stride: int = 1) -> Conv2d:
    """3x3 conv + norm + ReLU with Detectron2's MSRA init, as in its mask head."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=1,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=nn.ReLU(),
    )
    weight_init.c2_msra_fill(conv)
    return conv


def check_pooled_input(head_name: str, cfg: CfgNode, input_shape) -> None:
    """Heads that take one pooled tensor need the ROI heads' mask pooler (a non-empty POOLER_TYPE)."""
    if not isinstance(input_shape, ShapeSpec):
        raise ValueError(
            f"{head_name} needs pooled region features: set MODEL.ROI_MASK_HEAD.POOLER_TYPE "
            f"(got {cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE!r})"
        )


def with_module_lists(module: nn.Module, *list_names: str) -> nn.Module:
    """A deep copy of ``module`` whose plain Python lists of layers ``list_names`` are ``nn.ModuleList``s.

    For ``__prepare_scriptable__``: TorchScript cannot iterate a Python list of modules, and the layers must
    keep their own (stock checkpoint) names in eager mode. The scripted copy reaches each layer under both.
    """
    scriptable = copy.deepcopy(module)
    for name in list_names:
        setattr(scriptable, name, nn.ModuleList(getattr(scriptable, name)))
    return scriptable


def mask_head_num_classes(cfg: CfgNode) -> int:
    """Mask channels: 1 for class-agnostic masks, else one per class."""
    return 1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES


class MaskExtHead(BaseMaskRCNNHead):
    """A mask head whose loss follows ``MODEL.ROI_MASK_HEAD.LOSS``.

    Subclasses implement ``layers`` (region features -> ``(B, C, M, M)`` mask logits, traceable) and may
    override ``head_inputs`` (to pool their own features) or ``logits_and_losses`` (to add loss terms).
    """

    # True for heads that pool their own region features: ``MaskExtROIHeads`` then builds no mask pooler
    # and passes the feature maps, whatever ``MODEL.ROI_MASK_HEAD.POOLER_TYPE`` says.
    pools_own_features = False

    @configurable
    def __init__(self, *, mask_loss: MaskLoss = MaskLoss(), **kwargs):
        super().__init__(**kwargs)
        self.mask_loss = mask_loss

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape) -> dict:
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


def check_mask_loss_options(cfg: CfgNode, head: nn.Module) -> None:
    """Refuse ``MODEL.ROI_MASK_HEAD.LOSS`` options that the configured head would silently ignore."""
    if isinstance(head, MaskExtHead):
        return
    loss = cfg.MODEL.ROI_MASK_HEAD.LOSS
    defaults = add_maskext_config(get_cfg()).MODEL.ROI_MASK_HEAD.LOSS
    changed = [f"LOSS.{key} {value!r}" for key, value in loss.items() if value != defaults.get(key)]
    if changed:
        fix = (
            "set MODEL.ROI_MASK_HEAD.NAME to MaskExtConvUpsampleHead (the same network with the loss options)"
            if isinstance(head, MaskRCNNConvUpsampleHead)
            else "use one of the plugin's mask heads"
        )
        raise ValueError(
            f"MODEL.ROI_MASK_HEAD.NAME {cfg.MODEL.ROI_MASK_HEAD.NAME!r} keeps Detectron2's mask loss and would "
            f"ignore MODEL.ROI_MASK_HEAD.{', '.join(changed)}: {fix}"
        )


def mask_logits_and_losses(head: BaseMaskRCNNHead, x, instances: list[Instances]) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and losses from any mask head; Detectron2's own heads keep their stock loss."""
    if isinstance(head, MaskExtHead):
        return head.logits_and_losses(x, instances)
    logits = head.layers(x)
    return logits, {"loss_mask": mask_rcnn_loss(logits, instances, head.vis_period) * head.loss_weight}


@ROI_MASK_HEAD_REGISTRY.register()
class MaskExtConvUpsampleHead(MaskExtHead, MaskRCNNConvUpsampleHead):
    """Detectron2's ``MaskRCNNConvUpsampleHead`` (same layers and parameter names) with the loss options."""

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape) -> dict:
        check_pooled_input(cls.__name__, cfg, input_shape)
        return super().from_config(cfg, input_shape)
