"""Double-Head R-CNN (Wu et al., CVPR 2020): fc branch for classification, conv branch for box regression.

The paper finds fc layers more spatially sensitive (better at telling object from background) and conv
layers better at localisation, so each task gets its own branch on the same region features.
``DoubleConvFCHead`` computes both branches; its ``DoubleHeadOutputLayers`` predictor, which
``MaskExtROIHeads`` builds for it, classifies from the fc branch and regresses from the conv branch.
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BottleneckBlock
from detectron2.modeling.roi_heads.box_head import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from torch import Tensor, nn
from torch.nn import functional as F

from .head_layers import keep_scriptable_lists, with_module_lists
from .roi_heads import BoxHeadWithPredictor, MaskExtROIHeads


@ROI_BOX_HEAD_REGISTRY.register()
class DoubleConvFCHead(FastRCNNConvFCHead, BoxHeadWithPredictor):
    """Stock fc head (same parameter names, so stock checkpoints load) + a residual conv branch.

    Returns the fc and conv branch features concatenated along channels (one tensor, so Detectron2's box
    branch scripts and traces unchanged); ``build_box_predictor`` gives the predictor that splits them.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, reg_conv_dim: int, reg_num_blocks: int, conv_norm: str = "", **kwargs):
        super().__init__(input_shape, conv_norm=conv_norm, **kwargs)
        if reg_num_blocks < 1:
            raise ValueError(f"MODEL.ROI_BOX_HEAD.DOUBLE_HEAD.NUM_BLOCKS must be >= 1, got {reg_num_blocks}")
        self.fc_branch = list(self)  # the stock layers, in order; the conv branch below is not part of it
        blocks, channels = [], input_shape.channels
        for _ in range(reg_num_blocks):
            blocks.append(BottleneckBlock(channels, reg_conv_dim, bottleneck_channels=reg_conv_dim // 4, norm=conv_norm))
            channels = reg_conv_dim
        self.reg_blocks = nn.Sequential(*blocks)
        self._reg_channels = reg_conv_dim
        keep_scriptable_lists(self, "fc_branch")

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        roi_heads = cfg.MODEL.ROI_HEADS.NAME
        if not issubclass(ROI_HEADS_REGISTRY.get(roi_heads), MaskExtROIHeads):
            raise ValueError(
                f"DoubleConvFCHead needs ROI heads that build its predictor: MODEL.ROI_HEADS.NAME {roi_heads!r} does "
                "not; use MaskExtROIHeads or one of its subclasses"
            )
        ret = super().from_config(cfg, input_shape)
        ret["reg_conv_dim"] = cfg.MODEL.ROI_BOX_HEAD.DOUBLE_HEAD.CONV_DIM
        ret["reg_num_blocks"] = cfg.MODEL.ROI_BOX_HEAD.DOUBLE_HEAD.NUM_BLOCKS
        return ret

    def __prepare_scriptable__(self) -> nn.Module:
        return with_module_lists(self)

    def forward(self, x: Tensor) -> Tensor:
        cls_features = x
        for layer in self.fc_branch:
            cls_features = layer(cls_features)
        reg_features = F.adaptive_avg_pool2d(self.reg_blocks(x), 1).flatten(1)
        return torch.cat([cls_features.flatten(1), reg_features], dim=1)

    @property
    @torch.jit.unused
    def reg_output_shape(self) -> ShapeSpec:
        """Shape of the conv (regression) branch output; ``output_shape`` is the fc branch's."""
        return ShapeSpec(channels=self._reg_channels)

    def build_box_predictor(self, cfg: CfgNode) -> DoubleHeadOutputLayers:
        """The predictor ``MaskExtROIHeads`` pairs with this head."""
        return DoubleHeadOutputLayers(cfg, self.output_shape, self.reg_output_shape)


class DoubleHeadOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN outputs with class scores from the fc branch and box deltas from the conv branch.

    The regression layer is ``conv_bbox_pred`` (a new parameter: stock ``bbox_pred`` reads fc features).
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, reg_input_shape: ShapeSpec, **kwargs):
        super().__init__(input_shape, **kwargs)
        out_features = self.bbox_pred.out_features
        del self.bbox_pred
        self.conv_bbox_pred = nn.Linear(reg_input_shape.channels, out_features)
        nn.init.normal_(self.conv_bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.conv_bbox_pred.bias)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec, reg_input_shape: ShapeSpec) -> dict:
        ret = super().from_config(cfg, input_shape)
        ret["reg_input_shape"] = reg_input_shape
        return ret

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Class scores and box deltas from ``DoubleConvFCHead``'s concatenated branch features."""
        cls_features, reg_features = x.split([self.cls_score.in_features, self.conv_bbox_pred.in_features], dim=1)
        return self.cls_score(cls_features), self.conv_bbox_pred(reg_features)
