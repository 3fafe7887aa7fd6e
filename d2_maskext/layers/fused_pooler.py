"""Detectron2's ``ROIPooler`` with every FPN level pooled by one RoIAlign call.

``ROIPooler`` loops over levels in Python (a ``nonzero``, a gather and a scatter per level) around
torchvision's single-threaded kernel. ``FusedROIPooler`` assigns levels with Detectron2's own rule (pure
tensor math) and hands all levels and all boxes to ``d2_maskext::roi_align``, which writes output row k
for box k directly. ``MODEL.MASKEXT.POOLER`` picks between the two (:func:`convert_pooler`).
"""

from __future__ import annotations

import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes
from torch import Tensor, nn

from .roi_align import multilevel_roi_align

__all__ = ["POOLER_CHOICES", "FusedROIPooler", "convert_pooler"]

POOLER_CHOICES = ("stock", "fused")

_FUSABLE_TYPES = ("ROIAlign", "ROIAlignV2")


def boxes_to_rois(box_lists: list[Boxes]) -> Tensor:
    """(K, 5) rois ``(image index, x1, y1, x2, y2)`` of the concatenated ``box_lists``.

    Detectron2's ``convert_boxes_to_pooler_format`` turns the box counts into a tensor with ``as_tensor``,
    which ``torch.export`` specializes to the example's counts; ``full_like`` keeps them symbolic (and
    traced and scripted graphs follow the input's box count as well).
    """
    rois = [torch.cat([torch.full_like(b.tensor[:, :1], i), b.tensor], dim=1) for i, b in enumerate(box_lists)]
    return torch.cat(rois, dim=0)


class FusedROIPooler(ROIPooler):
    """Same constructor, forward signature, output and (empty) state dict as ``ROIPooler``.

    Supports the ``ROIAlign`` and ``ROIAlignV2`` pooler types. Boxes keep their float32 coordinates even
    when the features are float16/bfloat16 (``ROIPooler`` rounds them to the feature dtype).
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        scales: list[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ):
        if pooler_type not in _FUSABLE_TYPES:
            raise ValueError(f"FusedROIPooler supports pooler types {_FUSABLE_TYPES}, got {pooler_type!r}")
        super().__init__(
            output_size, scales, sampling_ratio, pooler_type, canonical_box_size, canonical_level
        )
        self.scales = [float(s) for s in scales]
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = pooler_type == "ROIAlignV2"

    @classmethod
    def from_roi_pooler(cls, pooler: ROIPooler) -> FusedROIPooler:
        """The fused equivalent of an existing ``ROIPooler`` (raises for ROIPool/ROIAlignRotated)."""
        first = pooler.level_poolers[0]
        if type(first) is not ROIAlign:
            raise ValueError(
                f"FusedROIPooler supports pooler types {_FUSABLE_TYPES}; this ROIPooler uses {type(first).__name__}"
            )
        return cls(
            output_size=pooler.output_size,
            scales=[p.spatial_scale for p in pooler.level_poolers],
            sampling_ratio=first.sampling_ratio,
            pooler_type="ROIAlignV2" if first.aligned else "ROIAlign",
            canonical_box_size=pooler.canonical_box_size,
            canonical_level=pooler.canonical_level,
        )

    def forward(self, x: list[Tensor], box_lists: list[Boxes]) -> Tensor:
        """Pools boxes of image i from ``x[level][i]``; output rows follow the concatenated ``box_lists``.

        Scriptable like ``ROIPooler`` (the scripted module calls the compiled op directly).
        """
        if not isinstance(x, list) or not isinstance(box_lists, list):
            raise TypeError("FusedROIPooler: x and box_lists must be lists")
        if len(x) != len(self.level_poolers):
            raise ValueError(
                f"FusedROIPooler: expected {len(self.level_poolers)} feature levels, got {len(x)}"
            )
        if len(box_lists) != x[0].size(0):
            raise ValueError(
                f"FusedROIPooler: x[0] holds {x[0].size(0)} images but box_lists has {len(box_lists)} entries"
            )
        height, width = self.output_size
        if len(box_lists) == 0:
            return torch.zeros((0, x[0].shape[1], height, width), dtype=x[0].dtype, device=x[0].device)
        rois = boxes_to_rois(box_lists)
        levels: Tensor | None = None
        if len(x) > 1:
            levels = assign_boxes_to_levels(
                box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
            )
        if torch.jit.is_scripting():
            return torch.ops.d2_maskext.roi_align(
                x, rois, levels, self.scales, height, width, self.sampling_ratio, self.aligned
            )
        return multilevel_roi_align(
            x, rois, levels, (height, width), self.scales, self.sampling_ratio, self.aligned
        )


def convert_pooler(pooler: ROIPooler, choice: str) -> nn.Module:
    """Return ``pooler`` unchanged for "stock", or an equivalent ``FusedROIPooler`` for "fused"."""
    if choice not in POOLER_CHOICES:
        raise ValueError(f"MODEL.MASKEXT.POOLER must be one of {POOLER_CHOICES}, got {choice!r}")
    if choice == "stock":
        return pooler
    return FusedROIPooler.from_roi_pooler(pooler)
