"""ROI heads that can swap Detectron2's per-level ``ROIPooler`` for the fused multi-level pooler.

They also let a head variant be selected by its ``NAME`` line alone: a mask head that pools its own
features gets the feature maps instead of a pooler, and a box head that needs its own predictor gets it.
"""

import inspect

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, build_mask_head

from ..layers.pooler import convert_pooler
from .heads.base import check_mask_loss_options


def pools_own_features(mask_head_name: str) -> bool:
    """Whether the registered mask head pools its own region features (``pools_own_features = True``)."""
    return bool(getattr(ROI_MASK_HEAD_REGISTRY.get(mask_head_name), "pools_own_features", False))


@ROI_HEADS_REGISTRY.register()
class MaskExtROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose box and mask poolers follow ``MODEL.MASKEXT.POOLER``.

    The poolers have no parameters, so checkpoints are interchangeable with ``StandardROIHeads``. A box
    head with a ``build_box_predictor(cfg)`` method gets that predictor instead of Detectron2's.
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
        build_box_predictor = getattr(ret["box_head"], "build_box_predictor", None)
        if build_box_predictor is not None:
            ret["box_predictor"] = build_box_predictor(cfg)
        return ret

    @classmethod
    def _init_mask_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        if cfg.MODEL.MASK_ON and pools_own_features(cfg.MODEL.ROI_MASK_HEAD.NAME):
            in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
            feature_shapes = {f: input_shape[f] for f in in_features}
            return {
                "mask_in_features": in_features,
                "mask_pooler": None,
                "mask_head": build_mask_head(cfg, feature_shapes),
            }
        ret = super()._init_mask_head(cfg, input_shape)
        if ret.get("mask_pooler") is not None:
            ret["mask_pooler"] = convert_pooler(ret["mask_pooler"], cfg.MODEL.MASKEXT.POOLER)
        if "mask_head" in ret:
            check_mask_loss_options(cfg, ret["mask_head"])
        return ret
