"""RoIAlign with torchvision's semantics, single- or multi-level, backed by ``torch.ops.d2_maskext.roi_align``.

When the compiled extension is missing, or has no kernel for the device of the features (a ``_C`` built
without CUDA given CUDA tensors), the same functions run a pure-PyTorch implementation
(``reference_roi_align``): RoIAlign is separable, ``out[k, c] = Wy[k] @ map[b_k, c] @ Wx[k].T``, where
``Wy``/``Wx`` hold the bilinear weights of each bin's samples summed per pixel. It is exact but slower.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._ext import ROI_ALIGN_DEVICE_TYPES

__all__ = ["multilevel_roi_align", "reference_roi_align", "roi_align"]

# Mirrors ops/roi_align_common.h: grids above SCAN_ALL_GRID samples are narrowed to the samples that can
# touch the map; adaptive grids are clamped to MAX_GRID so their size never overflows.
_SCAN_ALL_GRID = 64
_MAX_GRID = 1 << 40
# Bound on the (rois x channels x bins x width) intermediate of the reference implementation.
_REFERENCE_CHUNK_ELEMENTS = 1 << 24


def _pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    height, width = output_size
    return int(height), int(width)


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """``torchvision.ops.roi_align`` for ``rois`` of shape (K, 5); rois keep their own float dtype."""
    return multilevel_roi_align([input], rois, None, output_size, [spatial_scale], sampling_ratio, aligned)


def multilevel_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor | None,
    output_size: int | Sequence[int],
    spatial_scales: Sequence[float],
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """Pools roi ``k`` from ``features[levels[k]]`` (at ``spatial_scales[levels[k]]``) in one call.

    Output row ``k`` is roi ``k``; rois whose level is outside ``[0, len(features))`` pool to zeros.
    ``levels`` may be None for a single level.
    """
    pooled_height, pooled_width = _pair(output_size)
    scales = [float(s) for s in spatial_scales]
    if features and features[0].device.type in ROI_ALIGN_DEVICE_TYPES:
        return torch.ops.d2_maskext.roi_align(
            list(features), rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned
        )
    return reference_roi_align(
        features, rois, levels, (pooled_height, pooled_width), scales, sampling_ratio, aligned
    )


def reference_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor | None,
    output_size: tuple[int, int],
    spatial_scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """Pure-PyTorch ``multilevel_roi_align`` (differentiable through autograd); same checks and results."""
    _check_reference_inputs(features, rois, levels, output_size, spatial_scales)
    first = features[0]
    batch_size, channels = first.shape[:2]
    acc_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    rois = rois.to(acc_dtype)
    _check_roi_values(rois, batch_size)
    roi_levels = (
        torch.zeros(len(rois), dtype=torch.long, device=rois.device) if levels is None else levels.long()
    )
    batch_index = rois[:, 0].long()
    output = torch.zeros(len(rois), channels, *output_size, dtype=acc_dtype, device=first.device)
    for level, (feature, scale) in enumerate(zip(features, spatial_scales)):
        wy, wx = _separable_weights(
            rois, feature.shape[2], feature.shape[3], output_size, scale, sampling_ratio, aligned
        )
        feature = feature.to(acc_dtype)
        chunk = max(1, _REFERENCE_CHUNK_ELEMENTS // max(1, channels * output_size[0] * feature.shape[3]))
        for image in range(batch_size):
            index = torch.nonzero((roi_levels == level) & (batch_index == image)).flatten()
            for part in index.split(chunk):
                rows = torch.einsum("kph,chw->kcpw", wy[part], feature[image])
                output = output.index_put((part,), torch.einsum("kcpw,kqw->kcpq", rows, wx[part]))
    return output.to(first.dtype)


def _check_reference_inputs(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor | None,
    output_size: tuple[int, int],
    spatial_scales: Sequence[float],
) -> None:
    if len(features) == 0 or len(features) != len(spatial_scales):
        raise ValueError(
            f"roi_align: got {len(features)} feature levels but {len(spatial_scales)} spatial scales"
        )
    for i, f in enumerate(features):
        if f.dim() != 4 or f.shape[:2] != features[0].shape[:2]:
            raise ValueError(
                f"roi_align: feature level {i} has shape {tuple(f.shape)}; all levels must be (N, C, H, W)"
            )
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_align: rois must have shape (K, 5), got {tuple(rois.shape)}")
    if levels is None and len(features) > 1:
        raise ValueError(f"roi_align: {len(features)} feature levels need a `levels` tensor")
    if levels is not None and levels.shape != (len(rois),):
        raise ValueError(f"roi_align: levels must have shape ({len(rois)},), got {tuple(levels.shape)}")
    if min(output_size) <= 0:
        raise ValueError(f"roi_align: output size must be positive, got {output_size}")


def _check_roi_values(rois: Tensor, batch_size: int) -> None:
    finite = torch.isfinite(rois).all(dim=1)
    if not bool(finite.all()):
        k = int(torch.nonzero(~finite)[0])
        raise ValueError(f"roi_align: roi {k} = {rois[k].tolist()} has a non-finite value")
    batch = rois[:, 0]
    bad = (batch < 0) | (batch >= batch_size)
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"roi_align: roi {k} has batch index {batch[k].item():g} but the feature maps hold {batch_size} images"
        )


def _separable_weights(
    rois: Tensor,
    height: int,
    width: int,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor]:
    """(K, PH, H) and (K, PW, W) weights, as ``roi_geometry`` + ``AxisWeights::build`` in the C++ kernel."""
    scale = torch.tensor(spatial_scale, dtype=rois.dtype, device=rois.device)
    offset = 0.5 if aligned else 0.0
    start_w, start_h, end_w, end_h = (rois[:, j] * scale - offset for j in range(1, 5))
    roi_width, roi_height = end_w - start_w, end_h - start_h
    # Before the legacy clamp, which would turn a -inf size into a 1-pixel box.
    finite = (
        torch.isfinite(start_w)
        & torch.isfinite(start_h)
        & torch.isfinite(roi_width)
        & torch.isfinite(roi_height)
    )
    if not aligned:
        roi_width, roi_height = roi_width.clamp(min=1.0), roi_height.clamp(min=1.0)
    bin_h = roi_height / output_size[0]
    bin_w = roi_width / output_size[1]
    wy = _axis_weights(start_h, bin_h, _sample_grid(bin_h, sampling_ratio, finite), output_size[0], height)
    wx = _axis_weights(start_w, bin_w, _sample_grid(bin_w, sampling_ratio, finite), output_size[1], width)
    return wy, wx


def _sample_grid(bin_size: Tensor, sampling_ratio: int, finite: Tensor) -> Tensor:
    if sampling_ratio > 0:
        grid = torch.full_like(bin_size, sampling_ratio, dtype=torch.long)
    else:
        grid = torch.ceil(torch.where(finite, bin_size, 0.0)).clamp(0, _MAX_GRID).long()
    return torch.where(finite, grid, 0)


def _axis_weights(start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, size: int) -> Tensor:
    """Summed bilinear weights (K, bins, size) of each bin's samples along one axis, divided by the grid."""
    num_rois = len(start)
    weights = torch.zeros(num_rois, bins, max(size, 0), dtype=start.dtype, device=start.device)
    if size <= 0 or num_rois == 0:
        return weights
    origin = start[:, None] + torch.arange(bins, dtype=start.dtype, device=start.device) * bin_size[:, None]
    first, last = _sample_range(origin, bin_size[:, None], grid[:, None].expand_as(origin), size)
    slots = int((last - first).max())
    if slots == 0:
        return weights
    sample = first[..., None] + torch.arange(slots, device=start.device)
    in_range = sample < last[..., None]
    offset = (sample.float() + 0.5).to(start.dtype)
    position = origin[..., None] + offset * bin_size[:, None, None] / grid[:, None, None].clamp(min=1).to(
        start.dtype
    )
    valid = in_range & (position >= -1) & (position <= size)
    position = torch.where(position <= 0, 0.0, position)
    low = position.long().clamp(max=size - 1)
    at_edge = low >= size - 1
    high = torch.where(at_edge, low, low + 1)
    position = torch.where(at_edge, low.to(start.dtype), position)
    fraction = position - low.to(start.dtype)
    w_high = torch.where(valid, fraction, 0.0)
    w_low = torch.where(valid, 1 - fraction, 0.0)
    weights.scatter_add_(2, low.clamp(min=0), w_low)
    weights.scatter_add_(2, high.clamp(min=0), w_high)
    inv_grid = torch.where(grid > 0, 1.0 / grid.clamp(min=1).to(start.dtype), 0.0)
    return weights * inv_grid[:, None, None]


def _sample_range(origin: Tensor, bin_size: Tensor, grid: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """[first, last) sample indices per bin that may touch [-1, size]; see ``sample_range`` in C++."""
    first = torch.zeros_like(grid)
    last = grid.clamp(min=0)
    narrow = (grid > _SCAN_ALL_GRID) & (bin_size != 0)
    if not bool(narrow.any()):
        return first, last
    origin_d, bin_d, grid_d = origin.double(), bin_size.double(), grid.double()
    step = bin_d / grid_d
    eps = torch.finfo(origin.dtype).eps
    slack = 8.0 * eps * (origin_d.abs() + 2.0 * bin_d.abs()) + 1e-6
    lo = (-1.0 - slack - origin_d) / step - 0.5
    hi = (size + slack - origin_d) / step - 0.5
    lo, hi = torch.where(step < 0, hi, lo), torch.where(step < 0, lo, hi)
    lo = torch.minimum(lo.clamp(min=-1.0), grid_d)
    hi = torch.minimum(hi.clamp(min=-1.0), grid_d)
    narrow_first = (lo.floor().long() - 1).clamp(min=0)
    narrow_last = torch.minimum(hi.floor().long() + 2, grid)
    narrow_last = torch.maximum(narrow_last, narrow_first)
    return torch.where(narrow, narrow_first, first), torch.where(narrow, narrow_last, last)
