"""High-resolution mask head: 4x POOLER_RESOLUTION masks (56x56 by default) for sharper boundaries.

The stock conv stack and deconvolution turn multi-level 14x14 region features into 28x28 features; an
extra stage adds region features pooled at 28x28 from the finest FPN level (p2, stride 4, where thin
parts and edges are still resolved), refines them and upsamples again. Detectron2's
``mask_rcnn_inference`` and mask pasting work unchanged with any square mask size.
"""

from __future__ import annotations

from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, get_norm
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, mask_rcnn_inference
from detectron2.structures import Instances
from fvcore.nn import weight_init
from torch import Tensor, nn
from torch.nn import functional as F

from ....layers.fused_pooler import convert_pooler
from ..head_layers import conv3x3_norm_relu, keep_scriptable_lists, with_module_lists
from .conv_upsample import MaskExtConvUpsampleHead


@ROI_MASK_HEAD_REGISTRY.register()
class HighResMaskHead(MaskExtConvUpsampleHead):
    """Stock mask layers (same parameter names) + a refinement stage fed by the finest FPN level.

    It pools its own inputs, by Detectron2's convention for such heads (PointRend's too): with
    ``MODEL.ROI_MASK_HEAD.POOLER_TYPE`` empty the ROI heads pass it the feature maps. Its poolers are of type
    ``MODEL.ROI_MASK_HEAD.HIRES.POOLER_TYPE`` with the stock ``POOLER_RESOLUTION`` and ``POOLER_SAMPLING_RATIO``,
    converted by ``MODEL.MASKEXT.POOLER`` like the ROI heads' own.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        in_features: list[str],
        fine_feature: str,
        fine_channels: int,
        coarse_pooler: nn.Module,
        fine_pooler: nn.Module,
        num_refine_conv: int,
        conv_norm: str = "",
        **kwargs,
    ):
        super().__init__(input_shape=input_shape, conv_norm=conv_norm, **kwargs)
        dim = self.deconv.out_channels
        self.in_features = in_features
        self.fine_feature = fine_feature
        self.coarse_pooler = coarse_pooler
        self.fine_pooler = fine_pooler
        self.fine_lateral = Conv2d(
            fine_channels, dim, kernel_size=1, bias=not conv_norm, norm=get_norm(conv_norm, dim), activation=nn.ReLU()
        )
        weight_init.c2_msra_fill(self.fine_lateral)
        self.refine_convs = []
        for k in range(num_refine_conv):
            conv = conv3x3_norm_relu(dim, dim, conv_norm)
            self.add_module(f"refine_fcn{k + 1}", conv)
            self.refine_convs.append(conv)
        self.refine_deconv = ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        weight_init.c2_msra_fill(self.refine_deconv)
        keep_scriptable_lists(self, "conv_norm_relus", "refine_convs")

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec | dict[str, ShapeSpec]) -> dict:
        head_cfg = cfg.MODEL.ROI_MASK_HEAD
        if not isinstance(input_shape, dict):
            raise ValueError(
                f"{cls.__name__} pools its own features: set MODEL.ROI_MASK_HEAD.POOLER_TYPE to '' (got "
                f"{head_cfg.POOLER_TYPE!r}); its own pooler type is MODEL.ROI_MASK_HEAD.HIRES.POOLER_TYPE"
            )
        if not head_cfg.HIRES.POOLER_TYPE:
            raise ValueError(
                f"{cls.__name__} pools its own features with MODEL.ROI_MASK_HEAD.HIRES.POOLER_TYPE: set it to a "
                "pooler type such as 'ROIAlignV2' (got '')"
            )
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        fine = head_cfg.HIRES.FINE_FEATURE
        if fine not in input_shape:
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.HIRES.FINE_FEATURE {fine!r} is not among MODEL.ROI_HEADS.IN_FEATURES {in_features}"
            )
        resolution = head_cfg.POOLER_RESOLUTION

        def pooler(features: list[str], size: int) -> nn.Module:
            stock = ROIPooler(
                output_size=size,
                scales=tuple(1.0 / input_shape[f].stride for f in features),
                sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
                pooler_type=head_cfg.HIRES.POOLER_TYPE,
            )
            return convert_pooler(stock, cfg.MODEL.MASKEXT.POOLER)

        channels = input_shape[in_features[0]].channels
        ret = super().from_config(cfg, ShapeSpec(channels=channels, height=resolution, width=resolution))
        ret.update(
            in_features=in_features,
            fine_feature=fine,
            fine_channels=input_shape[fine].channels,
            coarse_pooler=pooler(in_features, resolution),
            fine_pooler=pooler([fine], 2 * resolution),
            num_refine_conv=head_cfg.HIRES.NUM_CONV,
        )
        return ret

    def __prepare_scriptable__(self) -> nn.Module:
        return with_module_lists(self)

    def forward(self, x: dict[str, Tensor], instances: list[Instances]):
        """``MaskExtHead.forward`` typed for feature maps (TorchScript compiles one signature per class)."""
        if self.training:
            return self.logits_and_losses(x, instances)[1]
        mask_rcnn_inference(self.layers(self.head_inputs(x, instances)), instances)
        return instances

    def head_inputs(self, x: dict[str, Tensor], instances: list[Instances]) -> tuple[Tensor, Tensor]:
        """Region features pooled at R x R from all levels and at 2R x 2R from the fine level."""
        boxes = [i.proposal_boxes if self.training else i.pred_boxes for i in instances]
        coarse = self.coarse_pooler([x[f] for f in self.in_features], boxes)
        fine = self.fine_pooler([x[self.fine_feature]], boxes)
        return coarse, fine

    def layers(self, x: tuple[Tensor, Tensor]) -> Tensor:
        coarse, fine = x
        for conv in self.conv_norm_relus:
            coarse = conv(coarse)
        features = self.deconv_relu(self.deconv(coarse)) + self.fine_lateral(fine)
        for conv in self.refine_convs:
            features = conv(features)
        return self.predictor(F.relu(self.refine_deconv(features)))
