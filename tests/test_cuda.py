"""d2_maskext::roi_align on CUDA: equal to torchvision, the CPU kernel and the PyTorch reference, also on a
side stream and in a CUDA graph; same errors; trains.

Skipped without a GPU. With one, every test needs the compiled CUDA kernels: a ``_C`` built without them
fails here rather than quietly testing the PyTorch fallback.
"""

from __future__ import annotations

import pytest
import torch
from detectron2.config import get_cfg
from helpers.train_net_runner import REPO
from test_fused_pooler import fpn_features, pooler_pair, random_boxes
from test_roi_align import assert_low_precision_close_to_float32, random_rois
from torchvision.ops import roi_align as tv_roi_align

from d2_maskext.config import add_maskext_config
from d2_maskext.engine import Trainer
from d2_maskext.layers import FusedROIPooler, multilevel_roi_align, reference_roi_align, roi_align
from d2_maskext.layers._ext import ROI_ALIGN_DEVICE_TYPES

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _cuda_kernels_built() -> None:
    assert "cuda" in ROI_ALIGN_DEVICE_TYPES, (
        "d2_maskext._C has no CUDA kernels; rebuild with `FORCE_CUDA=1 pip install --no-build-isolation -e .`"
    )


def _pyramid(g: torch.Generator, batch: int, channels: int, channels_last: bool) -> list[torch.Tensor]:
    features = [
        torch.randn(batch, channels, 24 // 2**i, 30 // 2**i, generator=g, dtype=torch.float64)
        for i in range(3)
    ]
    if channels_last:
        features = [f.contiguous(memory_format=torch.channels_last) for f in features]
    return features


def _pool_with_grad(features, rois, levels, grad, output_size, scales, sampling_ratio, aligned, fn):
    leaves = [f.detach().clone().requires_grad_(True) for f in features]
    out = fn(leaves, rois, levels, output_size, scales, sampling_ratio, aligned)
    grads = torch.autograd.grad(out, leaves, grad)
    return out, grads


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(0, True), (2, False), (1, True)])
def test_forward_and_backward_match_cpu_and_reference(channels_last, sampling_ratio, aligned):
    g = torch.Generator().manual_seed(20 + sampling_ratio)
    features = _pyramid(g, 2, 5, channels_last)
    scales = [1 / 4, 1 / 8, 1 / 16]
    rois = random_rois(g, 60, 2, 120.0)
    levels = torch.randint(-1, 4, (60,), generator=g)  # -1 and 3 are outside the table: zeros
    grad = torch.randn(60, 5, 4, 3, generator=g, dtype=torch.float64)
    args = ((4, 3), scales, sampling_ratio, aligned)

    cpu_out, cpu_grads = _pool_with_grad(features, rois, levels, grad, *args, multilevel_roi_align)
    ref_out, ref_grads = _pool_with_grad(features, rois, levels, grad, *args, reference_roi_align)
    on_gpu = [f.to(CUDA) for f in features]
    gpu_out, gpu_grads = _pool_with_grad(
        on_gpu, rois.to(CUDA), levels.to(CUDA), grad.to(CUDA), *args, multilevel_roi_align
    )

    for expected_out, expected_grads in ((cpu_out, cpu_grads), (ref_out, ref_grads)):
        torch.testing.assert_close(gpu_out.cpu(), expected_out, rtol=1e-10, atol=1e-12)
        for ours, expected in zip(gpu_grads, expected_grads):
            torch.testing.assert_close(ours.cpu(), expected, rtol=1e-10, atol=1e-12)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert all(g.is_contiguous(memory_format=memory_format) for g in gpu_grads)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(0, True), (2, False)])
def test_gradcheck_float64(channels_last, sampling_ratio, aligned):
    g = torch.Generator().manual_seed(21)
    x = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64).to(CUDA)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    rois = random_rois(g, 8, 2, 8.0).to(CUDA)
    # Atomics add in any order: repeated backward passes agree to rounding, not bit for bit.
    assert torch.autograd.gradcheck(
        lambda t: roi_align(t, rois, (3, 2), 0.7, sampling_ratio, aligned), (x,), nondet_tol=1e-12
    )


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_close_to_float32(dtype, channels_last):
    g = torch.Generator().manual_seed(22)
    x = torch.randn(2, 16, 20, 20, generator=g).to(CUDA)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = random_rois(g, 40, 2, 50.0, dtype=torch.float32).to(CUDA)
    grad = torch.randn(40, 16, 7, 7, generator=g).to(CUDA)
    assert_low_precision_close_to_float32(x, rois, grad, dtype)


def _peak_bytes_above_current(fn) -> tuple[object, int]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - before


def test_channels_last_maps_are_pooled_in_place():
    g = torch.Generator().manual_seed(23)
    x = torch.randn(2, 256, 200, 304, generator=g).to(CUDA).contiguous(memory_format=torch.channels_last)
    rois = random_rois(g, 64, 2, 300.0, dtype=torch.float32).to(CUDA)
    map_bytes = x.numel() * x.element_size()
    expected = roi_align(x.contiguous(), rois, 7, 0.25, 0, True)

    out, forward_peak = _peak_bytes_above_current(lambda: roi_align(x, rois, 7, 0.25, 0, True))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert forward_peak < map_bytes // 4, f"forward allocated {forward_peak} bytes for a {map_bytes}-byte map"

    leaf = x.detach().requires_grad_(True)
    grad = torch.randn_like(expected)

    def backward() -> torch.Tensor:
        return torch.autograd.grad(roi_align(leaf, rois, 7, 0.25, 0, True), leaf, grad)[0]

    x_grad, backward_peak = _peak_bytes_above_current(backward)
    assert x_grad.is_contiguous(memory_format=torch.channels_last)
    # One float32 gradient map, accumulated in its final layout; no second full-size buffer.
    assert backward_peak < 1.25 * map_bytes, f"backward peaked at {backward_peak} bytes for {map_bytes}"


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory < 24 * 2**30,
    reason="needs a 24 GB GPU",
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_outputs_beyond_int32_indices(channels_last):
    # 128 x 2048 x 128 x 64 = 2**31 output elements: thread indices are decoded in 64-bit here.
    g = torch.Generator().manual_seed(24)
    x = torch.randn(1, 2048, 8, 8, generator=g).to(CUDA, torch.float16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = random_rois(g, 128, 1, 8.0, dtype=torch.float32).to(CUDA)
    with torch.no_grad():
        big = roi_align(x, rois, (128, 64), 1.0, 1, True)
        for k in (0, 77, 127):
            assert torch.equal(big[k], roi_align(x, rois[k : k + 1], (128, 64), 1.0, 1, True)[0])


def test_backward_refuses_deterministic_mode():
    x = torch.randn(1, 4, 10, 10, device=CUDA, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 1.0, 8.0, 8.0]], device=CUDA)
    expected = roi_align(x, rois, 3, 1.0, 0, True)
    mode, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        torch.use_deterministic_algorithms(True)
        out = roi_align(x, rois, 3, 1.0, 0, True)  # the forward has no atomics: allowed
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        with pytest.raises(
            RuntimeError, match=r"_roi_align_backward \(CUDA, atomics\) does not have a deterministic"
        ):
            out.sum().backward()
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match=r"_roi_align_backward \(CUDA, atomics\)"):
            roi_align(x, rois, 3, 1.0, 0, True).sum().backward()
    finally:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)


@pytest.mark.parametrize(
    ("output_size", "sampling_ratio", "pooler_type"), [(7, 0, "ROIAlignV2"), (14, 2, "ROIAlign")]
)
def test_fused_pooler_matches_roi_pooler(output_size, sampling_ratio, pooler_type):
    g = torch.Generator().manual_seed(25)
    features = [f.to(CUDA) for f in fpn_features(g, 2, 8, 150, 203)]
    box_lists = [random_boxes(g, 60, 150, 203).to(CUDA), random_boxes(g, 35, 150, 203).to(CUDA)]
    stock, fused = pooler_pair(output_size, sampling_ratio, pooler_type)
    grad = torch.randn(95, 8, output_size, output_size, generator=g).to(CUDA)
    outputs, grads = [], []
    for pooler in (stock, fused):
        x = [f.clone().requires_grad_(True) for f in features]
        out = pooler(x, box_lists)
        outputs.append(out)
        grads.append(torch.autograd.grad(out, x, grad))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for ours, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "rois",
    [
        torch.tensor([[0.0, 0, 0, 1, 1], [2.0, 0, 0, 1, 1]]),
        torch.tensor([[-1.0, 0, 0, 1, 1]]),
        torch.tensor([[0.0, 0, 0, 1, 1], [0, 0, float("nan"), 1, 1], [5.0, 0, 0, 1, 1]]),
        torch.tensor([[0.0, 0, 0, float("inf"), 1]]),
        torch.tensor([[float("nan"), 0, 0, 1, 1]]),
        torch.tensor([[0.0, 0, 0, 1e300, 1]], dtype=torch.float64),  # not finite once in float32
    ],
)
@pytest.mark.parametrize("aligned", [False, True])
def test_bad_rois_raise_the_cpu_error(rois, aligned):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError) as on_cpu:
        roi_align(x, rois, 2, 1.0, 0, aligned)
    with pytest.raises(RuntimeError) as on_gpu:
        roi_align(x.to(CUDA), rois.to(CUDA), 2, 1.0, 0, aligned)
    assert str(on_gpu.value).splitlines()[0] == str(on_cpu.value).splitlines()[0]
    assert str(on_cpu.value).startswith("roi_align: roi ")


def test_overflowing_box_pools_zeros_like_cpu():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    rois = torch.tensor([[0, 1.0, 1.0, -3e38, 2.0], [0, 1.0, 1.0, 3.0, 3.0]])
    for aligned in (False, True):
        on_gpu = roi_align(x.to(CUDA), rois.to(CUDA), 2, 2.0, 1, aligned).cpu()
        torch.testing.assert_close(on_gpu, roi_align(x, rois, 2, 2.0, 1, aligned))
        assert on_gpu[0].abs().max() == 0


def _grads_of(fn, features: list[torch.Tensor], grad: torch.Tensor, *args) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(output, gradient of each feature map) of ``fn(leaves, *args)`` for the output gradient ``grad``."""
    leaves = [f.detach().clone().requires_grad_(True) for f in features]
    out = fn(leaves, *args)
    return out, list(torch.autograd.grad(out, leaves, grad))


def _ours(features: list[torch.Tensor], *args) -> torch.Tensor:
    return roi_align(features[0], *args)


def _torchvision(features: list[torch.Tensor], *args) -> torch.Tensor:
    return tv_roi_align(features[0], *args)


def test_matches_torchvision_on_random_shapes():
    g = torch.Generator().manual_seed(30)
    for case in range(12):
        batch, channels = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        height, width = (int(v) for v in torch.randint(1, 41, (2,), generator=g))
        output_size = tuple(int(v) for v in torch.randint(1, 8, (2,), generator=g))
        scale = [1.0, 0.5, 0.25, 0.125][case % 4]
        sampling_ratio, aligned = case % 4, bool(case % 3)
        x = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64).to(CUDA)
        rois = random_rois(g, 30, batch, max(height, width) / scale).to(CUDA)
        grad = torch.randn(30, channels, *output_size, generator=g, dtype=torch.float64).to(CUDA)
        args = (rois, output_size, scale, sampling_ratio, aligned)
        ours, (ours_grad,) = _grads_of(_ours, [x], grad, *args)
        expected, (expected_grad,) = _grads_of(_torchvision, [x], grad, *args)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12, msg=lambda m, c=case: f"case {c}: {m}")
        torch.testing.assert_close(ours_grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_huge_boxes_match_torchvision_and_the_cpu_kernel():
    # Adaptive grids of 100 to 1200 samples per bin axis: above 64, only the samples near the map are visited.
    g = torch.Generator().manual_seed(31)
    x = torch.randn(2, 3, 9, 7, generator=g, dtype=torch.float64)
    rois = torch.tensor(
        [
            [0, -900.0, -1200.0, 1100.0, 900.0],
            [1, -3000.0, 2.0, 3.5, 2500.0],
            [1, 2.0, -400.0, 5.0, 8.0],
            [0, -200.0, -200.0, 210.0, 190.0],
        ],
        dtype=torch.float64,
    )
    grad = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    for aligned in (False, True):
        args = ((2, 2), 1.0, 0, aligned)
        on_gpu = _grads_of(_ours, [x.to(CUDA)], grad.to(CUDA), rois.to(CUDA), *args)
        tv = _grads_of(_torchvision, [x.to(CUDA)], grad.to(CUDA), rois.to(CUDA), *args)
        on_cpu = _grads_of(_ours, [x], grad, rois, *args)
        for expected in (tv, on_cpu):
            torch.testing.assert_close(on_gpu[0].cpu(), expected[0].cpu(), rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(on_gpu[1][0].cpu(), expected[1][0].cpu(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_empty_rois_backward_gives_zero_gradients_in_the_input_layout(channels_last):
    g = torch.Generator().manual_seed(32)
    features = [f.to(CUDA) for f in _pyramid(g, 2, 4, channels_last)]
    rois = torch.zeros(0, 5, dtype=torch.float64, device=CUDA)
    levels = torch.zeros(0, dtype=torch.long, device=CUDA)
    grad = torch.zeros(0, 4, 3, 3, dtype=torch.float64, device=CUDA)
    out, grads = _grads_of(multilevel_roi_align, features, grad, rois, levels, 3, [1 / 4, 1 / 8, 1 / 16], 0, True)
    assert out.shape == (0, 4, 3, 3)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for feature, feature_grad in zip(features, grads):
        assert feature_grad.shape == feature.shape and feature_grad.is_contiguous(memory_format=memory_format)
        assert feature_grad.abs().max() == 0


def test_int32_levels_equal_int64_levels():
    g = torch.Generator().manual_seed(33)
    features = [f.to(CUDA) for f in _pyramid(g, 2, 3, False)]
    rois = random_rois(g, 50, 2, 120.0).to(CUDA)
    levels = torch.randint(-1, 4, (50,), generator=g).to(CUDA)
    grad = torch.randn(50, 3, 4, 4, generator=g, dtype=torch.float64).to(CUDA)
    scales = [1 / 4, 1 / 8, 1 / 16]
    as_long = _grads_of(multilevel_roi_align, features, grad, rois, levels, 4, scales, 2, True)
    as_int = _grads_of(multilevel_roi_align, features, grad, rois, levels.int(), 4, scales, 2, True)
    torch.testing.assert_close(as_int[0], as_long[0], rtol=0, atol=0)
    for ours, expected in zip(as_int[1], as_long[1]):
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)  # atomics: any order


def test_non_contiguous_rois_equal_their_contiguous_copy():
    g = torch.Generator().manual_seed(34)
    x = torch.randn(2, 5, 20, 16, generator=g).to(CUDA)
    rois = random_rois(g, 40, 2, 80.0, dtype=torch.float32).to(CUDA)
    padded = torch.zeros(40, 9, device=CUDA)
    padded[:, 2:7] = rois
    transposed = rois.t().contiguous().t()
    every_other = torch.stack([rois, torch.zeros_like(rois)], dim=1).flatten(0, 1)[::2]
    expected = roi_align(x, rois, (5, 4), 0.25, 0, True)
    for strided in (padded[:, 2:7], transposed, every_other):
        assert not strided.is_contiguous()
        torch.testing.assert_close(roi_align(x, strided, (5, 4), 0.25, 0, True), expected, rtol=0, atol=0)


def test_mixed_layout_pyramid_equals_nchw_pyramid():
    g = torch.Generator().manual_seed(35)
    nchw = [f.to(CUDA) for f in _pyramid(g, 2, 6, False)]
    nchw.append(torch.randn(2, 6, 1, 1, generator=g, dtype=torch.float64).to(CUDA))  # both layouts at once
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    rois = random_rois(g, 60, 2, 120.0).to(CUDA)
    levels = torch.randint(0, 4, (60,), generator=g).to(CUDA)
    grad = torch.randn(60, 6, 3, 3, generator=g, dtype=torch.float64).to(CUDA)
    args = (rois, levels, 3, scales, 0, True)
    expected_out, expected_grads = _grads_of(multilevel_roi_align, nchw, grad, *args)
    channels_last = [f.contiguous(memory_format=torch.channels_last) for f in nchw]
    for layouts in ((0, 1, 0, 1), (1, 0, 0, 0), (1, 1, 1, 0), (1, 1, 1, 1)):
        mixed = [channels_last[i] if cl else nchw[i] for i, cl in enumerate(layouts)]
        out, grads = _grads_of(multilevel_roi_align, mixed, grad, *args)
        torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
        for ours, expected in zip(grads, expected_grads):
            torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
        # Channels-last only when every map is channels-last (the 1x1 map is either); otherwise NCHW.
        all_channels_last = all(layouts[:3])
        memory_format = torch.channels_last if all_channels_last else torch.contiguous_format
        assert all(g.is_contiguous(memory_format=memory_format) for g in grads), layouts


def test_non_default_stream_orders_the_op_after_earlier_work_on_that_stream():
    g = torch.Generator().manual_seed(36)
    x = torch.randn(2, 8, 32, 32, generator=g).to(CUDA)
    rois = random_rois(g, 64, 2, 120.0, dtype=torch.float32).to(CUDA)
    grad = torch.randn(64, 8, 7, 7, generator=g).to(CUDA)
    args = (rois, 7, 0.25, 0, True)
    expected, (expected_grad,) = _grads_of(_ours, [x], grad, *args)
    staged = torch.zeros_like(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # the copy below lands well after an op on another stream would read
        staged.copy_(x)
        out, (out_grad,) = _grads_of(_ours, [staged], grad, *args)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(out_grad, expected_grad, rtol=1e-6, atol=1e-6)


def test_cuda_graph_replays_forward_and_backward():
    g = torch.Generator().manual_seed(37)
    features = [f.float().to(CUDA) for f in _pyramid(g, 2, 4, True)]
    scales = [1 / 4, 1 / 8, 1 / 16]
    rois = random_rois(g, 48, 2, 120.0, dtype=torch.float32).to(CUDA)
    levels = torch.randint(0, 3, (48,), generator=g).to(CUDA)
    grad = torch.randn(48, 4, 5, 5, generator=g).to(CUDA)
    leaves = [f.clone().requires_grad_(True) for f in features]

    def step() -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        out = multilevel_roi_align(leaves, rois, levels, 5, scales, 2, True)
        return out, torch.autograd.grad(out, leaves, grad)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the graph, as CUDA graph capture requires
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_grads = step()

    new_rois = random_rois(g, 48, 2, 120.0, dtype=torch.float32)
    new_rois[5, 0] = 7  # outside the batch: the check needs a sync, so a captured op pools zeros instead
    with torch.no_grad():
        for leaf in leaves:
            leaf.normal_(generator=None)
        rois.copy_(new_rois.to(CUDA))
        levels.copy_(torch.randint(0, 3, (48,), generator=g).to(CUDA))
    graph.replay()
    torch.cuda.synchronize()
    assert static_out[5].abs().max() == 0
    valid = torch.arange(48, device=CUDA) != 5
    expected = multilevel_roi_align([f.detach() for f in leaves], rois[valid], levels[valid], 5, scales, 2, True)
    torch.testing.assert_close(static_out[valid], expected, rtol=1e-6, atol=1e-6)
    rois[5, 0] = 0  # zero gradient from the zero row: same gradients as a valid roi with zero grad
    masked_grad = grad * valid[:, None, None, None]
    eager = torch.autograd.grad(multilevel_roi_align(leaves, rois, levels, 5, scales, 2, True), leaves, masked_grad)
    for ours, expected_grad in zip(static_grads, eager):
        torch.testing.assert_close(ours, expected_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_demo_config_trains_on_cuda(tmp_path):
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(REPO / "configs" / "synthetic" / "mask_rcnn_R18_FPN_GN_demo.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cuda",
            "DATASETS.TRAIN", '("maskext_synth_tiny_train",)',
            "DATASETS.TEST", "()",
            "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.MAX_ITER", "3",
            "SOLVER.CHECKPOINT_PERIOD", "1000",
            "OUTPUT_DIR", str(tmp_path),
        ]
    )  # fmt: skip
    trainer = Trainer(cfg)
    assert isinstance(trainer.model.roi_heads.box_pooler, FusedROIPooler)
    assert next(trainer.model.parameters()).is_cuda
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
