"""Property-based fuzzing of d2_maskext::roi_align and FusedROIPooler over adversarial shapes and boxes.

Boxes may be empty, degenerate, inverted, huge, negative, NaN or infinite; maps may be 1x1 or empty;
scales need not be powers of two. Properties: no crash; a clear error for non-finite boxes and bad batch
indices; otherwise finite output equal to torchvision / Detectron2 wherever those are defined and
affordable (their cost grows with the square of the box size), and to the pure-PyTorch fallback always.
"""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.ops import roi_align as tv_roi_align

from d2_maskext.layers import HAS_C_EXT, FusedROIPooler, reference_roi_align, roi_align

pytestmark = pytest.mark.skipif(not HAS_C_EXT, reason="d2_maskext._C is not built")

FUZZ = settings(
    max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
# torchvision visits every sample of every bin; above this many per bin it would take minutes.
AFFORDABLE_SAMPLES_PER_BIN = 4096

coordinate = st.one_of(
    st.floats(-30, 60, width=32),
    st.sampled_from([0.0, -0.5, -1.0, 0.5, 1.0, 7.0, 8.0]),
    st.floats(-1e7, 1e7, width=32),
)
bad_value = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def box_rows(draw, batch: int) -> list[list[float]]:
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        x1, y1 = draw(coordinate), draw(coordinate)
        shape = draw(st.sampled_from(["any", "degenerate", "small"]))
        if shape == "degenerate":
            x2, y2 = x1, draw(coordinate)
        elif shape == "small":
            x2, y2 = x1 + draw(st.floats(-2, 12)), y1 + draw(st.floats(-2, 12))
        else:
            x2, y2 = draw(coordinate), draw(coordinate)
        rows.append([float(draw(st.integers(0, batch - 1))), x1, y1, x2, y2])
    return rows


def samples_per_bin(
    rois: torch.Tensor, scales: torch.Tensor, output_size: tuple[int, int], sr: int, aligned: bool
) -> torch.Tensor:
    """torchvision's sample count per bin for each roi (its cost), in float64; inf where torchvision is
    undefined (a negative adaptive grid, from an inverted box when aligned, sizes its buffers negatively)."""
    if sr > 0:
        return torch.full((len(rois),), float(sr * sr), dtype=torch.float64)
    extent = (rois[:, 3:5] - rois[:, 1:3]) * scales[:, None]
    if not aligned:
        extent = extent.clamp(min=1.0)
    grid = torch.ceil(extent / torch.tensor([output_size[1], output_size[0]], dtype=torch.float64))
    cost = grid[:, 0] * grid[:, 1]
    return torch.where((grid < 0).any(dim=1), math.inf, cost)


def corrupt(
    draw, rows: list[list[float]], batch: int, kinds: tuple[str, ...] = ("value", "batch")
) -> str | None:
    """Sometimes plant a non-finite coordinate or an out-of-range batch index; returns the expected error."""
    if not rows:
        return None
    kind = draw(st.sampled_from([None, None, None, *kinds]))
    k = draw(st.integers(0, len(rows) - 1))
    if kind == "value":
        rows[k][draw(st.integers(1, 4))] = draw(bad_value)
        return "has a non-finite value"
    if kind == "batch":
        rows[k][0] = float(draw(st.sampled_from([-1, batch, batch + 3])))
        return "has batch index"
    return None


@FUZZ
@given(data=st.data())
def test_fuzz_single_level_op(data):
    draw = data.draw
    batch, channels = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    height, width = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    output_size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    scale = draw(st.sampled_from([0.25, 1 / 3, 0.5, 0.7, 1.0, 2.0]))
    sampling_ratio = draw(st.integers(-1, 3))
    aligned = draw(st.booleans())
    rows = draw(box_rows(batch))
    error = corrupt(draw, rows, batch)
    x = torch.randn(
        batch, channels, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    if draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    rois = torch.tensor(rows, dtype=torch.float64).view(-1, 5)
    args = (output_size, scale, sampling_ratio, aligned)

    if error is not None:
        with pytest.raises(RuntimeError, match=error):
            roi_align(x, rois, *args)
        with pytest.raises(ValueError, match=error):
            reference_roi_align([x], rois, None, output_size, [scale], sampling_ratio, aligned)
        return

    x.requires_grad_(True)
    out = roi_align(x, rois, *args)
    assert out.shape == (len(rows), channels, *output_size)
    assert torch.isfinite(out).all()
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(out, x, grad_out)
    assert torch.isfinite(grad).all()

    x_ref = x.detach().requires_grad_(True)
    expected = reference_roi_align([x_ref], rois, None, output_size, [scale], sampling_ratio, aligned)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, x_ref, grad_out)[0], rtol=1e-9, atol=1e-9)

    affordable = samples_per_bin(
        rois, torch.full((len(rows),), scale, dtype=torch.float64), output_size, sampling_ratio, aligned
    )
    if height > 0 and width > 0 and bool((affordable <= AFFORDABLE_SAMPLES_PER_BIN).all()):
        torch.testing.assert_close(out, tv_roi_align(x.detach(), rois, *args), rtol=1e-9, atol=1e-9)


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_fused_pooler(data):
    draw = data.draw
    batch = draw(st.integers(1, 2))
    image_h, image_w = draw(st.integers(8, 90)), draw(st.integers(8, 90))
    first_level = draw(st.integers(2, 3))
    num_levels = draw(st.integers(1, 6 - first_level))
    scales = [1 / 2 ** (first_level + i) for i in range(num_levels)]
    output_size = draw(st.sampled_from([1, 2, 3, 7]))
    sampling_ratio = draw(st.integers(0, 2))
    pooler_type = draw(st.sampled_from(["ROIAlignV2", "ROIAlign"]))
    g = torch.Generator().manual_seed(2)
    features = [
        torch.randn(
            batch, 2, math.ceil(image_h * s), math.ceil(image_w * s), dtype=torch.float64, generator=g
        )
        for s in scales
    ]  # sizes of odd images round up, as in Detectron2's FPN; small images give 1x1 maps
    rows = draw(box_rows(batch))
    error = corrupt(draw, rows, batch, kinds=("value",))  # box lists carry no batch index
    box_lists = [
        Boxes(torch.tensor([r[1:] for r in rows if r[0] == i], dtype=torch.float32).view(-1, 4))
        for i in range(batch)
    ]
    stock = ROIPooler(output_size, scales, sampling_ratio, pooler_type)
    fused = FusedROIPooler.from_roi_pooler(stock)

    if error is not None:
        with pytest.raises(RuntimeError, match=error):
            fused(features, box_lists)
        return

    out = fused(features, box_lists)
    assert out.shape == (len(rows), 2, output_size, output_size)
    assert torch.isfinite(out).all()
    rois = torch.cat([b.tensor for b in box_lists]).double()
    if len(rois) == 0:
        return
    rois = torch.cat([torch.zeros(len(rois), 1, dtype=torch.float64), rois], dim=1)
    levels = assign_boxes_to_levels(box_lists, fused.min_level, fused.max_level, 224, 4)
    in_table = (levels >= 0) & (levels < num_levels)
    roi_scales = torch.tensor(scales, dtype=torch.float64)[levels.clamp(0, num_levels - 1)]
    cost = samples_per_bin(
        rois, roi_scales, (output_size, output_size), sampling_ratio, pooler_type == "ROIAlignV2"
    )
    if bool((cost[in_table] <= AFFORDABLE_SAMPLES_PER_BIN).all()):
        torch.testing.assert_close(out, stock(features, box_lists), rtol=1e-9, atol=1e-9)
