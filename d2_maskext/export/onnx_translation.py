"""``d2_maskext::roi_align`` in standard ONNX operators, so exported models run in onnxruntime without the op.

One level is one ``RoiAlign`` (opset 16 or later, for ``coordinate_transformation_mode``): ``half_pixel`` is
torchvision's ``aligned=True`` (the -0.5 pixel shift), ``output_half_pixel`` its legacy ``aligned=False``
(no shift, sizes clamped to one pixel). The fused multi-level form pools, for each level, the rows whose
level is that level (``NonZero`` + ``GatherND``) and writes them back at their own row (``ScatterND``), so
row k of the output is roi k as in the op; rows of no level stay zero.

Used as the ``custom_translation_table`` of ``torch.onnx.export(..., dynamo=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from onnxscript import opset18 as op
from onnxscript.onnx_types import INT64

__all__ = ["ONNX_OPSET", "roi_align_to_onnx", "roi_align_translations"]

ONNX_OPSET = 18


def _pool_level(feature, rois, scale: float, height: int, width: int, sampling_ratio: int, aligned: bool):
    """``RoiAlign`` of (K, 5) ``rois`` (batch index, x1, y1, x2, y2) on one feature map."""
    boxes = op.Slice(rois, starts=[1], ends=[5], axes=[1])
    batch_index = op.Cast(op.Squeeze(op.Slice(rois, starts=[0], ends=[1], axes=[1]), axes=[1]), to=INT64.dtype)
    return op.RoiAlign(
        feature,
        boxes,
        batch_index,
        mode="avg",
        output_height=height,
        output_width=width,
        sampling_ratio=max(sampling_ratio, 0),  # torchvision's adaptive grid (<= 0) is ONNX's 0
        spatial_scale=scale,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )


def roi_align_to_onnx(
    features: Sequence,
    rois,
    levels,
    spatial_scales: Sequence[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
):
    """ONNX graph of ``torch.ops.d2_maskext.roi_align`` (same arguments as the op's schema)."""
    features = list(features)
    if len(features) != len(spatial_scales):
        raise ValueError(
            f"d2_maskext::roi_align ONNX translation: {len(features)} feature levels but "
            f"{len(spatial_scales)} spatial scales"
        )
    pool = {"height": pooled_height, "width": pooled_width, "sampling_ratio": sampling_ratio, "aligned": aligned}
    if levels is None:
        if len(features) != 1:
            raise ValueError(
                f"d2_maskext::roi_align ONNX translation: {len(features)} feature levels need a levels tensor"
            )
        return _pool_level(features[0], rois, spatial_scales[0], **pool)
    output_shape = op.Concat(
        op.Shape(rois, start=0, end=1),
        op.Shape(features[0], start=1, end=2),
        op.Constant(value_ints=[pooled_height, pooled_width]),
        axis=0,
    )
    output = op.Expand(op.CastLike(op.Constant(value_float=0.0), features[0]), output_shape)
    for level, (feature, scale) in enumerate(zip(features, spatial_scales)):
        rows = op.Transpose(op.NonZero(op.Equal(levels, op.CastLike(op.Constant(value_int=level), levels))))
        pooled = _pool_level(feature, op.GatherND(rois, rows), scale, **pool)
        output = op.ScatterND(output, rows, pooled)
    return output


def roi_align_translations() -> dict:
    """The ``custom_translation_table`` entries for the plugin's op; none without the compiled extension
    (models then pool with the pure-PyTorch RoIAlign, which exports to standard operators by itself)."""
    if not hasattr(torch.ops.d2_maskext, "roi_align"):
        return {}
    return {torch.ops.d2_maskext.roi_align.default: roi_align_to_onnx}
