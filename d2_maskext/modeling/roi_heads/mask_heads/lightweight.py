"""Lightweight mask head for CPU and edge inference: depthwise-separable convolutions.

Width and depth come from the stock keys ``MODEL.ROI_MASK_HEAD.CONV_DIM`` / ``NUM_CONV``. A depthwise 3x3 +
pointwise 1x1 pair costs about ``1/9 + 1/C`` of a dense 3x3 conv, so the head's cost is dominated by
its small final layers instead of four dense 256-channel convolutions per region.
"""

from __future__ import annotations

from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ConvTranspose2d, DepthwiseSeparableConv2d, ShapeSpec
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from fvcore.nn import weight_init
from torch import Tensor, nn
from torch.nn import functional as F

from .base import MaskExtHead, check_pooled_input, mask_head_num_classes


@ROI_MASK_HEAD_REGISTRY.register()
class LightMaskHead(MaskExtHead):
    """``num_conv`` depthwise-separable blocks, a 2x deconvolution and a 1x1 mask predictor."""

    @configurable
    def __init__(
        self, input_shape: ShapeSpec, *, num_classes: int, conv_dim: int, num_conv: int, conv_norm: str = "", **kwargs
    ):
        super().__init__(**kwargs)
        if num_conv < 1:
            raise ValueError(f"LightMaskHead needs MODEL.ROI_MASK_HEAD.NUM_CONV >= 1, got {num_conv}")
        self.blocks = nn.Sequential()
        channels = input_shape.channels
        for k in range(num_conv):
            # Xception-style: norm and ReLU after the pointwise conv only, half the per-pixel ops of MobileNet's.
            block = DepthwiseSeparableConv2d(channels, conv_dim, norm2=conv_norm, activation2=nn.ReLU())
            self.blocks.add_module(f"dsconv{k + 1}", block)
            channels = conv_dim
        self.upsample = ConvTranspose2d(conv_dim, conv_dim, kernel_size=2, stride=2)
        self.mask_logits = Conv2d(conv_dim, num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.upsample)
        nn.init.normal_(self.mask_logits.weight, std=0.001)
        nn.init.zeros_(self.mask_logits.bias)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        check_pooled_input(cls.__name__, cfg, input_shape)
        ret = super().from_config(cfg, input_shape)
        head_cfg = cfg.MODEL.ROI_MASK_HEAD
        ret.update(
            input_shape=input_shape,
            num_classes=mask_head_num_classes(cfg),
            conv_dim=head_cfg.CONV_DIM,
            num_conv=head_cfg.NUM_CONV,
            conv_norm=head_cfg.NORM,
        )
        return ret

    def layers(self, x: Tensor) -> Tensor:
        return self.mask_logits(F.relu(self.upsample(self.blocks(x))))
