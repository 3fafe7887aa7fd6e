"""d2_maskext::roi_align on CUDA: equal to the CPU kernel and the PyTorch reference, same errors, trains.

Skipped without a GPU. With one, every test needs the compiled CUDA kernels: a ``_C`` built without them
fails here rather than quietly testing the PyTorch fallback.
"""

from __future__ import annotations

import pytest
import torch
from detectron2.config import get_cfg
from test_fused_pooler import fpn_features, pooler_pair, random_boxes
from test_roi_align import assert_low_precision_close_to_float32, random_rois
from train_net_runner import REPO

from d2_maskext.config import add_maskext_config
from d2_maskext.engine import Trainer
from d2_maskext.layers import FusedROIPooler, multilevel_roi_align, reference_roi_align, roi_align
from d2_maskext.layers._ext import ROI_ALIGN_DEVICE_TYPES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

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
