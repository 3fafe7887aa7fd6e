"""Boundary-preserving mask head (BMask R-CNN, Cheng et al., ECCV 2020).

A boundary branch runs beside the mask branch on the same region features; the mask features feed the
boundary branch and the boundary features are fused back into the mask branch before upsampling. The
boundary branch is supervised with BCE + Dice on the inner boundary of the GT mask targets.
"""

from __future__ import annotations

from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import Instances
from fvcore.nn import weight_init
from torch import Tensor, nn
from torch.nn import functional as F

from ..head_layers import conv3x3_norm_relu, keep_scriptable_lists, with_module_lists
from ..mask_losses import dice_loss, mask_boundary, select_mask_targets
from .conv_upsample import MaskExtConvUpsampleHead


@ROI_MASK_HEAD_REGISTRY.register()
class BoundaryMaskHead(MaskExtConvUpsampleHead):
    """Stock mask branch (same parameter names, so stock checkpoints load) plus a fused boundary branch.

    ``boundary_to_mask`` starts at zero: with stock weights loaded, the masks start out exactly stock's.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_norm: str = "",
        num_boundary_conv: int,
        boundary_loss_weight: float,
        **kwargs,
    ):
        super().__init__(input_shape=input_shape, conv_norm=conv_norm, **kwargs)
        dim = self.deconv.out_channels
        self.boundary_convs = []
        channels = input_shape.channels
        for k in range(num_boundary_conv):
            conv = conv3x3_norm_relu(channels, dim, conv_norm)
            self.add_module(f"boundary_fcn{k + 1}", conv)
            self.boundary_convs.append(conv)
            channels = dim
        # The mask branch's features before upsampling: its last conv's, or the input with NUM_CONV 0.
        mask_channels = self.deconv.in_channels
        self.mask_to_boundary = Conv2d(mask_channels, channels, kernel_size=1)
        self.boundary_to_mask = Conv2d(channels, mask_channels, kernel_size=1)
        self.boundary_deconv = ConvTranspose2d(channels, dim, kernel_size=2, stride=2)
        self.boundary_predictor = Conv2d(dim, self.predictor.out_channels, kernel_size=1)
        for layer in (self.mask_to_boundary, self.boundary_deconv):
            weight_init.c2_msra_fill(layer)
        nn.init.zeros_(self.boundary_to_mask.weight)
        nn.init.zeros_(self.boundary_to_mask.bias)
        nn.init.normal_(self.boundary_predictor.weight, std=0.001)
        nn.init.zeros_(self.boundary_predictor.bias)
        self.boundary_loss_weight = boundary_loss_weight
        keep_scriptable_lists(self, "conv_norm_relus", "boundary_convs")

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape) -> dict:
        ret = super().from_config(cfg, input_shape)
        ret["num_boundary_conv"] = cfg.MODEL.ROI_MASK_HEAD.BOUNDARY.NUM_CONV
        ret["boundary_loss_weight"] = cfg.MODEL.ROI_MASK_HEAD.BOUNDARY.LOSS_WEIGHT
        return ret

    def __prepare_scriptable__(self) -> nn.Module:
        return with_module_lists(self)

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mask logits and boundary logits, both ``(B, C, 2R, 2R)``."""
        mask_features, boundary_features = x, x
        for conv in self.conv_norm_relus:
            mask_features = conv(mask_features)
        for conv in self.boundary_convs:
            boundary_features = conv(boundary_features)
        boundary_features = boundary_features + self.mask_to_boundary(mask_features)
        mask_features = mask_features + self.boundary_to_mask(boundary_features)
        mask_logits = self.predictor(self.deconv_relu(self.deconv(mask_features)))
        boundary_logits = self.boundary_predictor(F.relu(self.boundary_deconv(boundary_features)))
        return mask_logits, boundary_logits

    def layers(self, x: Tensor) -> Tensor:
        return self.branches(x)[0]

    def logits_and_losses(self, x: Tensor, instances: list[Instances]) -> tuple[Tensor, dict[str, Tensor]]:
        mask_logits, boundary_logits = self.branches(self.head_inputs(x, instances))
        losses = self.mask_loss(mask_logits, instances)
        targets = select_mask_targets(boundary_logits, instances)
        if targets.masks.numel() == 0:
            zero = boundary_logits.sum() * 0
            losses.update(loss_boundary_bce=zero, loss_boundary_dice=zero)
        else:
            boundary = mask_boundary(targets.masks, self.mask_loss.boundary_width)
            weight = self.boundary_loss_weight
            losses["loss_boundary_bce"] = weight * F.binary_cross_entropy_with_logits(targets.logits, boundary)
            losses["loss_boundary_dice"] = weight * dice_loss(targets.logits, boundary)
        return mask_logits, self.weighted(losses)
