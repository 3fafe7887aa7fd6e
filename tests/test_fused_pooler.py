"""FusedROIPooler equals Detectron2's ROIPooler (values, gradients, empty batches) and plugs into the model."""

from __future__ import annotations

import importlib

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from d2_maskext import add_maskext_config
from d2_maskext.layers import HAS_C_EXT, FusedROIPooler, convert_pooler

roi_align_module = importlib.import_module("d2_maskext.layers.roi_align")

pytestmark = pytest.mark.skipif(not HAS_C_EXT, reason="d2_maskext._C is not built")

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def fpn_features(
    generator: torch.Generator, batch: int, channels: int, height: int, width: int, dtype=torch.float32
) -> list[torch.Tensor]:
    """P2-P5 of an image of ``height`` x ``width`` (odd sizes round up, as in Detectron2's FPN)."""
    return [
        torch.randn(batch, channels, -(-height // s), -(-width // s), generator=generator, dtype=dtype)
        for s in (4, 8, 16, 32)
    ]


def random_boxes(generator: torch.Generator, num: int, height: int, width: int) -> Boxes:
    """Boxes of every size from 2 px to the whole image (so every level is used), some sticking out."""
    size = torch.exp(torch.empty(num, 2).uniform_(0.7, 6.5, generator=generator))
    centre = torch.rand(num, 2, generator=generator) * torch.tensor([width, height])
    return Boxes(torch.cat([centre - size / 2, centre + size / 2], dim=1))


def pooler_pair(output_size: int, sampling_ratio: int, pooler_type: str) -> tuple[ROIPooler, FusedROIPooler]:
    stock = ROIPooler(output_size, SCALES, sampling_ratio, pooler_type)
    return stock, FusedROIPooler.from_roi_pooler(stock)


@pytest.mark.parametrize(
    ("output_size", "sampling_ratio", "pooler_type"),
    [(7, 0, "ROIAlignV2"), (14, 0, "ROIAlignV2"), (7, 2, "ROIAlign"), (5, 1, "ROIAlignV2")],
)
def test_matches_roi_pooler_forward_and_backward(output_size, sampling_ratio, pooler_type):
    g = torch.Generator().manual_seed(output_size + sampling_ratio)
    features = fpn_features(g, 2, 8, 150, 203)
    box_lists = [random_boxes(g, 60, 150, 203), random_boxes(g, 35, 150, 203)]
    stock, fused = pooler_pair(output_size, sampling_ratio, pooler_type)
    grad = torch.randn(95, 8, output_size, output_size, generator=g)
    outputs, grads = [], []
    for pooler in (stock, fused):
        x = [f.clone().requires_grad_(True) for f in features]
        out = pooler(x, box_lists)
        (out * grad).sum().backward()
        outputs.append(out)
        grads.append([f.grad for f in x])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for ours, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64_all_levels():
    g = torch.Generator().manual_seed(1)
    features = [f.requires_grad_(True) for f in fpn_features(g, 2, 1, 40, 56, dtype=torch.float64)]
    box_lists = [random_boxes(g, 6, 40, 56), random_boxes(g, 5, 40, 56)]
    _, fused = pooler_pair(3, 0, "ROIAlignV2")
    assert torch.autograd.gradcheck(lambda *x: fused(list(x), box_lists), tuple(features), fast_mode=True)


def test_empty_batches():
    g = torch.Generator().manual_seed(2)
    features = fpn_features(g, 2, 4, 64, 64)
    stock, fused = pooler_pair(7, 0, "ROIAlignV2")
    empty = Boxes(torch.zeros(0, 4))
    one_empty = [empty, random_boxes(g, 3, 64, 64)]
    torch.testing.assert_close(fused(features, one_empty), stock(features, one_empty))
    assert fused(features, [empty, empty]).shape == (0, 4, 7, 7)
    no_images = [f[:0] for f in features]
    assert fused(no_images, []).shape == stock(no_images, []).shape == (0, 4, 7, 7)


def test_float32_boxes_under_low_precision_features():
    # Detectron2 casts boxes to the feature dtype; in float16 a coordinate like 1000.3 becomes 1000.5.
    g = torch.Generator().manual_seed(3)
    features = fpn_features(g, 1, 4, 1024, 1024)
    boxes = [Boxes(torch.tensor([[1000.3, 900.7, 1020.9, 1010.2], [600.1, 20.3, 1011.7, 700.9]]))]
    _, fused = pooler_pair(7, 0, "ROIAlignV2")
    expected = fused(features, boxes)
    for dtype, tol in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
        out = fused([f.to(dtype) for f in features], boxes)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused([f.bfloat16() for f in features], boxes).dtype == torch.bfloat16


def test_fallback_agrees_with_compiled_op(monkeypatch):
    g = torch.Generator().manual_seed(4)
    features = fpn_features(g, 2, 3, 100, 70, dtype=torch.float64)
    box_lists = [random_boxes(g, 20, 100, 70), random_boxes(g, 15, 100, 70)]
    _, fused = pooler_pair(7, 0, "ROIAlignV2")
    compiled = fused(features, box_lists)
    monkeypatch.setattr(roi_align_module, "ROI_ALIGN_DEVICE_TYPES", frozenset())
    torch.testing.assert_close(fused(features, box_lists), compiled, rtol=1e-10, atol=1e-12)


def test_conversion_keeps_configuration_and_rejects_other_pooler_types():
    stock = ROIPooler((14, 14), SCALES, 2, "ROIAlign", canonical_box_size=112, canonical_level=3)
    assert convert_pooler(stock, "stock") is stock
    fused = convert_pooler(stock, "fused")
    assert isinstance(fused, FusedROIPooler) and isinstance(fused, ROIPooler)
    assert (fused.output_size, fused.scales, fused.sampling_ratio, fused.aligned) == (
        (14, 14),
        SCALES,
        2,
        False,
    )
    assert (fused.canonical_box_size, fused.canonical_level) == (112, 3)
    assert fused.state_dict().keys() == stock.state_dict().keys() == set()
    with pytest.raises(ValueError, match="MODEL.MASKEXT.POOLER must be one of"):
        convert_pooler(stock, "fast")
    with pytest.raises(ValueError, match="this ROIPooler uses RoIPool"):
        convert_pooler(ROIPooler(7, SCALES, 0, "ROIPool"), "fused")
    with pytest.raises(ValueError, match="expected 4 feature levels, got 3"):
        fused([torch.zeros(1, 1, 8, 8)] * 3, [Boxes(torch.zeros(0, 4))])


class _TracedPooler(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pooler = pooler_pair(7, 0, "ROIAlignV2")[1]

    def forward(self, p2, p3, p4, p5, boxes):
        return self.pooler([p2, p3, p4, p5], [Boxes(boxes)])


def test_jit_trace_and_compile_round_trip():
    g = torch.Generator().manual_seed(5)
    inputs = (*fpn_features(g, 1, 4, 128, 96), random_boxes(g, 12, 128, 96).tensor)
    other = (*fpn_features(g, 1, 4, 128, 96), random_boxes(g, 12, 128, 96).tensor)
    module = _TracedPooler()
    traced = torch.jit.trace(module, inputs)
    torch.testing.assert_close(traced(*other), module(*other))
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="aot_eager")
    torch.testing.assert_close(compiled(*other), module(*other))


def _model(pooler: str):
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file("configs/synthetic/Base-Synthetic-R18-GN.yaml")
    cfg.merge_from_list(
        ["MODEL.MASKEXT.POOLER", pooler, "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128"]
    )
    return build_model(cfg).eval()


def test_model_with_fused_pooler_matches_stock_with_the_same_checkpoint():
    torch.manual_seed(0)
    stock = _model("stock")
    fused = _model("fused")
    assert isinstance(fused.roi_heads.box_pooler, FusedROIPooler)
    assert isinstance(fused.roi_heads.mask_pooler, FusedROIPooler)
    assert type(stock.roi_heads.box_pooler) is ROIPooler
    fused.load_state_dict(stock.state_dict())  # strict: the pooler adds no parameters
    image = torch.randint(0, 255, (3, 128, 128), generator=torch.Generator().manual_seed(6)).float()
    with torch.no_grad():
        features = stock.backbone(stock.preprocess_image([{"image": image}]).tensor)
        proposals = [
            Boxes(torch.tensor([[4.0, 8.0, 60.0, 90.0], [30.5, 2.25, 127.0, 127.0], [50, 50, 58, 61]]))
        ]
        for name in ("box", "mask"):
            in_features = [features[f] for f in stock.roi_heads.in_features]
            expected = getattr(stock.roi_heads, f"{name}_pooler")(in_features, proposals)
            got = getattr(fused.roi_heads, f"{name}_pooler")(in_features, proposals)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        out_stock = stock([{"image": image}])[0]["instances"]
        out_fused = fused([{"image": image}])[0]["instances"]
    assert len(out_stock) == len(out_fused)
    torch.testing.assert_close(out_fused.scores, out_stock.scores, rtol=1e-4, atol=1e-4)
