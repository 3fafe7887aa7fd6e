"""d2_maskext::roi_align against torchvision, hand-computed values, gradients, dtypes, bad input, export paths.

The pure-PyTorch fallback (``reference_roi_align``) is checked against the compiled op on the same cases.
"""

from __future__ import annotations

import io

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from d2_maskext.layers import HAS_C_EXT, multilevel_roi_align, reference_roi_align, roi_align

pytestmark = pytest.mark.skipif(not HAS_C_EXT, reason="d2_maskext._C is not built")


def random_rois(
    generator: torch.Generator, num: int, batch: int, extent: float, dtype=torch.float64
) -> torch.Tensor:
    """Boxes partly and wholly outside a map of size ~``extent``, plus degenerate and inverted ones."""
    xy = torch.rand(num, 2, generator=generator, dtype=dtype) * 2 * extent - 0.5 * extent
    wh = torch.rand(num, 2, generator=generator, dtype=dtype) * extent
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[::7, 2:] = boxes[::7, :2]  # zero-sized
    boxes[3::11] = boxes[3::11].flip(1)  # inverted
    index = torch.randint(0, batch, (num, 1), generator=generator).to(dtype)
    return torch.cat([index, boxes], dim=1)


def assert_low_precision_close_to_float32(x: torch.Tensor, rois: torch.Tensor, grad: torch.Tensor,
                                          dtype: torch.dtype) -> None:
    """roi_align of ``x`` in ``dtype`` (float32 ``rois``) keeps that dtype and is close to float32, both ways."""
    outs, grads = [], []
    for t in (x, x.to(dtype)):
        t = t.detach().clone().requires_grad_(True)
        out = roi_align(t, rois, 7, 0.5, 0, True)
        (out.float() * grad).sum().backward()
        outs.append(out)
        grads.append(t.grad)
    assert outs[1].dtype == dtype and grads[1].dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(outs[1].float(), outs[0], rtol=tol, atol=tol)
    torch.testing.assert_close(grads[1].float(), grads[0], rtol=tol, atol=tol)


def single_level_reference(x, rois, output_size, scale, sampling_ratio, aligned):
    return reference_roi_align([x], rois, None, output_size, [scale], sampling_ratio, aligned)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
def test_forward_matches_torchvision_and_fallback(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(10 * sampling_ratio + aligned)
    for batch, channels, height, width, output_size, scale in [
        (2, 3, 13, 17, (7, 7), 0.5),
        (1, 5, 1, 1, (2, 3), 1.0),
        (3, 2, 20, 9, (14, 14), 0.25),
    ]:
        x = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
        rois = random_rois(g, 40, batch, max(height, width) / scale)
        ours = roi_align(x, rois, output_size, scale, sampling_ratio, aligned)
        expected = tv_roi_align(x, rois, output_size, scale, sampling_ratio, aligned)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
        fallback = single_level_reference(x, rois, output_size, scale, sampling_ratio, aligned)
        torch.testing.assert_close(fallback, expected, rtol=1e-10, atol=1e-12)


def test_huge_boxes_visit_only_samples_on_the_map():
    # Adaptive grids of ~1000 samples per bin along each axis; the result must still match torchvision.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 6, 5, generator=g, dtype=torch.float64)
    rois = torch.tensor(
        [[0, -900.0, -1200.0, 1100.0, 900.0], [0, -3000.0, 2.0, 3.5, 2500.0]], dtype=torch.float64
    )
    for aligned in (False, True):
        expected = tv_roi_align(x, rois, (2, 2), 1.0, 0, aligned)
        torch.testing.assert_close(
            roi_align(x, rois, (2, 2), 1.0, 0, aligned), expected, rtol=1e-9, atol=1e-12
        )
        torch.testing.assert_close(
            single_level_reference(x, rois, (2, 2), 1.0, 0, aligned), expected, rtol=1e-9, atol=1e-12
        )
    # Far beyond what torchvision can loop over: defined, finite, and equal to the fallback.
    rois = torch.tensor([[0, -1e9, -3e9, 2e9, 1e9], [0, 1e12, 1e12, 2e12, 3e12]], dtype=torch.float64)
    ours = roi_align(x, rois, (3, 3), 0.5, 0, True)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, single_level_reference(x, rois, (3, 3), 0.5, 0, True))
    assert ours[1].abs().max() == 0


def test_exact_values_on_a_hand_computed_grid():
    # map(y, x) = 10 + 3y + x is linear, so each bin averages to the value at its samples' mean position.
    x = (10 + 3 * torch.arange(3.0)[:, None] + torch.arange(3.0)[None, :]).view(1, 1, 3, 3)
    rois = torch.tensor(
        [
            [0, 0.5, 0.5, 2.5, 2.5],  # aligned: bins [0,1]x[0,1] ... -> centres 0.5, 1.5
            [0, -5.0, -5.0, -3.0, -3.0],  # every sample more than one pixel outside -> 0
            [0, -0.5, -0.5, -0.5, -0.5],  # aligned, zero size: adaptive grid has no samples -> 0
        ]
    )
    out = roi_align(x, rois, (2, 2), 1.0, 0, aligned=True)
    torch.testing.assert_close(out[0, 0], torch.tensor([[12.0, 13.0], [15.0, 16.0]]))
    assert out[1:].abs().max() == 0
    # Legacy mode: a zero-sized box becomes 1x1; samples in [-1, 0] clamp to pixel 0, beyond W-1 to W-1.
    legacy = torch.tensor([[0, 0.0, 0.0, 0.0, 0.0], [0, -1.0, -1.0, -1.0, -1.0], [0, 2.2, 0.0, 2.2, 0.0]])
    out = roi_align(x, legacy, 1, 1.0, 1, aligned=False)
    torch.testing.assert_close(out.flatten(), torch.tensor([10 + 1.5 + 0.5, 10.0, 10 + 1.5 + 2.0]))


def test_box_whose_scaled_size_overflows_pools_zeros_in_legacy_mode():
    # Finite float32 coordinates, but x2 * scale = -inf: the box has no size, not the legacy 1-pixel minimum.
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    rois = torch.tensor([[0, 1.0, 1.0, -3e38, 2.0], [0, 1.0, 1.0, 2.0, -3e38]])
    for aligned in (False, True):
        assert roi_align(x, rois, 2, 2.0, 1, aligned).abs().max() == 0
        assert single_level_reference(x, rois, (2, 2), 2.0, 1, aligned).abs().max() == 0


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(0, True), (2, False)])
def test_gradcheck_float64(channels_last, sampling_ratio, aligned):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    rois = random_rois(g, 8, 2, 8.0)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (3, 2), 0.7, sampling_ratio, aligned), (x,))


@pytest.mark.parametrize(
    ("channels_last", "batch", "channels"),
    # 40 channels: 16-channel blocks plus a remainder; channels-last 4 x 16: each pixel's channels in one task.
    [(False, 2, 40), (True, 2, 40), (True, 4, 16), (False, 1, 64)],
)
def test_backward_matches_torchvision_and_fallback(channels_last, batch, channels):
    g = torch.Generator().manual_seed(6)
    base = torch.randn(batch, channels, 15, 18, generator=g, dtype=torch.float64)
    rois = random_rois(g, 50, batch, 30.0)
    grad = torch.randn(50, channels, 5, 4, generator=g, dtype=torch.float64)
    outputs, grads = [], []
    for fn in (roi_align, tv_roi_align, single_level_reference):
        x = base.clone()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        out = fn(x, rois, (5, 4), 0.5, 0, True)
        (out * grad).sum().backward()
        outputs.append(out)
        grads.append(x.grad)
    for ours in (outputs[0], outputs[2]):
        torch.testing.assert_close(ours, outputs[1], rtol=1e-10, atol=1e-12)
    for ours in (grads[0], grads[2]):
        torch.testing.assert_close(ours, grads[1], rtol=1e-10, atol=1e-12)


def _layout_cases() -> list[torch.Tensor]:
    """Maps contiguous in both NCHW and channels-last: C = 1 (two stride patterns) and 1x1 maps."""
    g = torch.Generator().manual_seed(12)
    return [
        torch.randn(2, 1, 9, 11, generator=g, dtype=torch.float64),
        torch.randn(2, 9, 11, 1, generator=g, dtype=torch.float64).permute(0, 3, 1, 2),
        torch.randn(2, 5, 1, 1, generator=g, dtype=torch.float64),
        torch.randn(2, 1, 1, 1, generator=g, dtype=torch.float64),
    ]


@pytest.mark.parametrize("case", range(4))
def test_maps_contiguous_in_both_layouts_match_torchvision(case):
    x = _layout_cases()[case]
    assert x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(13)
    rois = random_rois(g, 30, 2, 12.0)
    grad = torch.randn(30, x.shape[1], 3, 2, generator=g, dtype=torch.float64)
    results = []
    for fn in (roi_align, tv_roi_align):
        leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
        out = fn(leaf, rois, (3, 2), 1.0, 0, True)
        results.append((out, *torch.autograd.grad(out, leaf, grad)))
    for ours, expected in zip(*results):
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_map_contiguous_in_both_layouts_follows_the_other_levels():
    # A 1x1 top level (a small image's P6) is contiguous in both layouts: a channels-last pyramid stays
    # channels-last (pooled in place, gradients channels-last) instead of falling back to NCHW copies.
    g = torch.Generator().manual_seed(14)
    nchw = [torch.randn(2, 6, 16 // 2**i, 12 // 2**i, generator=g, dtype=torch.float64) for i in range(3)]
    nchw.append(torch.randn(2, 6, 1, 1, generator=g, dtype=torch.float64))
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 64]
    rois = random_rois(g, 40, 2, 64.0)
    levels = torch.randint(0, 4, (40,), generator=g)
    grad = torch.randn(40, 6, 2, 2, generator=g, dtype=torch.float64)
    results = {}
    for name, maps in (("nchw", nchw), ("channels_last", [f.contiguous(memory_format=torch.channels_last) for f in nchw])):
        leaves = [f.detach().clone(memory_format=torch.preserve_format).requires_grad_(True) for f in maps]
        out = multilevel_roi_align(leaves, rois, levels, 2, scales, 2, True)
        results[name] = (out, torch.autograd.grad(out, leaves, grad))
    torch.testing.assert_close(results["channels_last"][0], results["nchw"][0], rtol=1e-12, atol=1e-12)
    for ours, expected in zip(results["channels_last"][1], results["nchw"][1]):
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    strict = results["channels_last"][1][:3]
    assert all(g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous() for g in strict)
    assert all(g.is_contiguous() and not g.is_contiguous(memory_format=torch.channels_last)
               for g in results["nchw"][1][:3])


def test_backward_is_deterministic_across_thread_counts():
    g = torch.Generator().manual_seed(7)
    rois = random_rois(g, 200, 2, 20.0, dtype=torch.float32)
    grad = torch.randn(200, 64, 7, 7, generator=g)

    def input_grad() -> torch.Tensor:
        return torch.ops.d2_maskext._roi_align_backward(
            grad, rois, None, [1.0], 7, 7, 2, 64, [20], [20], 0, True, False
        )[0]

    threads = torch.get_num_threads()
    try:
        first = input_grad()
        torch.set_num_threads(1)
        single = input_grad()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, input_grad())
    assert torch.equal(first, single)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_close_to_float32(dtype):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 8, 16, 16, generator=g)
    rois = random_rois(g, 30, 2, 40.0, dtype=torch.float32)
    grad = torch.randn(30, 8, 7, 7, generator=g)
    assert_low_precision_close_to_float32(x, rois, grad, dtype)


def test_multilevel_pools_each_roi_from_its_level():
    g = torch.Generator().manual_seed(9)
    features = [torch.randn(2, 4, 32 // 2**i, 24 // 2**i, generator=g, dtype=torch.float64) for i in range(3)]
    scales = [1 / 4, 1 / 8, 1 / 16]
    rois = random_rois(g, 30, 2, 128.0)
    levels = torch.randint(-1, 4, (30,), generator=g)  # -1 and 3 are outside the table -> zeros
    ours = multilevel_roi_align(features, rois, levels, 3, scales, 2, True)
    for k in range(30):
        level = int(levels[k])
        if 0 <= level < 3:
            expected = tv_roi_align(features[level], rois[k : k + 1], 3, scales[level], 2, True)[0]
        else:
            expected = torch.zeros_like(ours[k])
        torch.testing.assert_close(ours[k], expected, rtol=1e-10, atol=1e-12)
    fallback = reference_roi_align(features, rois, levels, (3, 3), scales, 2, True)
    torch.testing.assert_close(fallback, ours, rtol=1e-10, atol=1e-12)
    # int32 levels behave the same.
    torch.testing.assert_close(multilevel_roi_align(features, rois, levels.int(), 3, scales, 2, True), ours)


def test_empty_rois_zero_sized_maps_and_non_contiguous_input():
    x = torch.randn(2, 3, 10, 12)
    empty = roi_align(x.requires_grad_(True), torch.zeros(0, 5), (4, 4), 1.0, 0, True)
    assert empty.shape == (0, 3, 4, 4)
    empty.sum().backward()
    assert x.grad.abs().max() == 0
    rois = torch.tensor([[1, 0.0, 0.0, 5.0, 5.0]])
    assert roi_align(torch.randn(2, 3, 0, 12), rois, 2, 1.0, 0, True).abs().max() == 0
    assert roi_align(torch.randn(2, 0, 4, 4), rois, 2, 1.0, 0, True).shape == (1, 0, 2, 2)
    strided = torch.randn(2, 6, 10, 24)[:, ::2, :, ::2]
    torch.testing.assert_close(
        roi_align(strided, rois, 3, 1.0, 2, True), tv_roi_align(strided.contiguous(), rois, 3, 1.0, 2, True)
    )


@pytest.mark.parametrize(
    ("rois", "message"),
    [
        (torch.zeros(3, 4), r"rois must have shape \(K, 5\)"),
        (torch.zeros(3, 5, dtype=torch.int64), "rois must be floating point"),
        (torch.tensor([[2.0, 0, 0, 1, 1]]), "roi 0 has batch index 2 but the feature maps hold 2 images"),
        (torch.tensor([[0.0, 0, 0, 1, 1], [-1.0, 0, 0, 1, 1]]), "roi 1 has batch index -1"),
        (torch.tensor([[0.0, 0, 0, 1, 1], [0, 0, float("nan"), 1, 1]]), "roi 1 .* has a non-finite value"),
        (torch.tensor([[0.0, 0, 0, float("inf"), 1]]), "roi 0 .* has a non-finite value"),
    ],
)
def test_bad_rois_raise_clear_errors(rois, message):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match=message):
        roi_align(x, rois, 2, 1.0, 0, True)
    if rois.is_floating_point() and rois.shape[1] == 5:
        with pytest.raises(ValueError, match=message):
            single_level_reference(x, rois, (2, 2), 1.0, 0, True)


def test_bad_features_levels_and_sizes_raise_clear_errors():
    x = torch.randn(2, 3, 8, 8)
    rois = torch.tensor([[0.0, 0, 0, 4, 4]])
    op = torch.ops.d2_maskext.roi_align
    with pytest.raises(RuntimeError, match="feature level 0 must be 4-D"):
        op([x[0]], rois, None, [1.0], 2, 2, 0, True)
    with pytest.raises(RuntimeError, match="feature level 1 is Double but level 0 is Float"):
        op([x, x.double()], rois, torch.zeros(1, dtype=torch.long), [1.0, 0.5], 2, 2, 0, True)
    with pytest.raises(RuntimeError, match="feature level 1 has shape .* batch and channels"):
        op([x, torch.randn(2, 4, 4, 4)], rois, torch.zeros(1, dtype=torch.long), [1.0, 0.5], 2, 2, 0, True)
    with pytest.raises(RuntimeError, match="2 feature levels need a `levels` tensor"):
        op([x, x], rois, None, [1.0, 0.5], 2, 2, 0, True)
    with pytest.raises(RuntimeError, match=r"levels must have shape \(K,\)"):
        op([x], rois, torch.zeros(2, dtype=torch.long), [1.0], 2, 2, 0, True)
    with pytest.raises(RuntimeError, match="levels must be int64 or int32"):
        op([x], rois, torch.zeros(1), [1.0], 2, 2, 0, True)
    with pytest.raises(RuntimeError, match="got 1 feature levels but 2 spatial scales"):
        op([x], rois, None, [1.0, 2.0], 2, 2, 0, True)
    with pytest.raises(RuntimeError, match="spatial scale 0 is not finite"):
        op([x], rois, None, [float("inf")], 2, 2, 0, True)
    with pytest.raises(RuntimeError, match=r"output size must be positive, got \(0, 2\)"):
        op([x], rois, None, [1.0], 0, 2, 0, True)
    with pytest.raises(RuntimeError, match="must be float32, float64, float16 or bfloat16"):
        op([x.int()], rois, None, [1.0], 2, 2, 0, True)
    with pytest.raises(RuntimeError, match="rois are on meta but the feature maps are on cpu"):
        op([x], rois.to("meta"), None, [1.0], 2, 2, 0, True)


class _Pool(torch.nn.Module):
    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return roi_align(x, rois, (4, 3), 0.5, 0, True)


def _compile_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 12, 10, generator=g), random_rois(g, 9, 2, 20.0, dtype=torch.float32)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_forward_and_backward(dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(_Pool(), backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for seed in (0, 1):
        x, rois = _compile_inputs(seed)
        x_eager = x.clone().requires_grad_(True)
        x_comp = x.clone().requires_grad_(True)
        expected = _Pool()(x_eager, rois)
        got = compiled(x_comp, rois)
        torch.testing.assert_close(got, expected)
        expected.square().sum().backward()
        got.square().sum().backward()
        torch.testing.assert_close(x_comp.grad, x_eager.grad)


def test_torch_export_and_jit_trace_round_trip():
    x, rois = _compile_inputs(0)
    x2, rois2 = _compile_inputs(1)
    exported = torch.export.export(_Pool(), (x, rois))
    torch.testing.assert_close(exported.module()(x2, rois2), _Pool()(x2, rois2))
    traced = torch.jit.trace(_Pool(), (x, rois))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    torch.testing.assert_close(loaded(x2, rois2), _Pool()(x2, rois2))
