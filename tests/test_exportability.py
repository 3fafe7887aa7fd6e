"""The fused pooler, the ROI heads and every head variant script, trace, compile and export like stock.

The bar is Detectron2's own tests (``tests/modeling/test_roi_pooler.py``, ``tests/modeling/test_roi_heads.py``,
``tests/test_export_torchscript.py``): the same checks, with the plugin's components swapped in.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.export.torchscript_patch import freeze_training_mode, patch_instances
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.testing import assert_instances_allclose, random_boxes, reload_script_model
from helpers.train_net_runner import shrink_to_tiny
from torch import Tensor, nn

from d2_maskext.config import add_maskext_config
from d2_maskext.export.scripting import INSTANCE_FIELDS
from d2_maskext.layers import HAS_C_EXT, FusedROIPooler
from d2_maskext.layers._ext import ROI_ALIGN_DEVICE_TYPES
from d2_maskext.modeling.roi_heads import DoubleConvFCHead

pytestmark = pytest.mark.skipif(not HAS_C_EXT, reason="scripting calls the compiled d2_maskext::roi_align op")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANTS = sorted(p.stem for p in (CONFIGS / "synthetic" / "variants").glob("*.yaml"))
FPN_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
MASK_HEADS = ["MaskRCNNConvUpsampleHead", "MaskExtConvUpsampleHead", "BoundaryMaskHead", "LightMaskHead"]
NEEDS_CUDA_KERNEL = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or "cuda" not in ROI_ALIGN_DEVICE_TYPES, reason="needs a GPU and the CUDA kernel"
    ),
]


def variant_cfg(variant: str, *opts: str) -> CfgNode:
    """A synthetic head-variant config, shrunk to the tiny test model, with the fused pooler."""
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(CONFIGS / "synthetic" / "variants" / f"{variant}.yaml"))
    shrink_to_tiny(cfg)
    cfg.merge_from_list(["MODEL.MASKEXT.POOLER", "fused", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *opts])
    return cfg


def fpn_features(batch: int, channels: int, height: int, width: int) -> list[Tensor]:
    return [torch.randn(batch, channels, -(-height // s), -(-width // s)) for s in (4, 8, 16, 32)]


# ------------------------------------------------------------------------------------------- pooler
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NEEDS_CUDA_KERNEL)])
@pytest.mark.parametrize("num_levels", [1, 4])
def test_fused_pooler_scripts(num_levels: int, device: str):
    """As Detectron2's ROIPooler scriptability test: the scripted pooler gives exactly the eager output."""
    torch.manual_seed(0)
    scales = FPN_SCALES[2:3] if num_levels == 1 else FPN_SCALES
    pooler = FusedROIPooler(output_size=14, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2")
    features = [f.to(device) for f in fpn_features(2, 4, 160, 128)]
    features = features[2:3] if num_levels == 1 else features
    box_lists = [Boxes(random_boxes(10, 128, device)), Boxes(random_boxes(7, 128, device))]
    scripted = reload_script_model(torch.jit.script(pooler))
    assert torch.equal(scripted(features, box_lists), pooler(features, box_lists))
    stock = ROIPooler(output_size=14, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2")
    torch.testing.assert_close(scripted(features, box_lists), stock(features, box_lists), rtol=1e-5, atol=1e-5)
    empty = [Boxes(torch.zeros(0, 4, device=device)), Boxes(torch.zeros(0, 4, device=device))]
    assert scripted(features, empty).shape == (0, 4, 14, 14)


class _PoolBoxes(nn.Module):
    """The pooler as a function of tensors only, for tracing and export."""

    def __init__(self, pooler: nn.Module):
        super().__init__()
        self.pooler = pooler

    def forward(self, features: list[Tensor], boxes: Tensor) -> Tensor:
        return self.pooler(features, [Boxes(boxes)])


def test_fused_pooler_traces_for_any_box_count():
    """As Detectron2's ROIPooler tracing test (two levels, one level holding a single box)."""
    torch.manual_seed(0)
    pooler = FusedROIPooler(output_size=14, scales=(1 / 16, 1 / 32), sampling_ratio=0, pooler_type="ROIAlign")
    feature = torch.randn(1, 4, 10, 8)
    features = [feature, feature[:, :, ::2, ::2].contiguous()]
    boxes = torch.cat([random_boxes(10, 128), torch.tensor([[0.0, 0.0, 448.0, 448.0]])])
    model = _PoolBoxes(pooler)
    with torch.no_grad():
        traced = torch.jit.trace(model, (features, boxes))
        for other in (boxes, boxes[:5], random_boxes(20, 128)):
            out = traced(features, other)
            assert out.shape == (len(other), 4, 14, 14)
            assert torch.equal(out, model(features, other))


def test_fused_pooler_exports_with_dynamic_box_count():
    torch.manual_seed(0)
    model = _PoolBoxes(FusedROIPooler(output_size=7, scales=FPN_SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"))
    features = fpn_features(1, 4, 128, 96)
    num_boxes = torch.export.Dim("num_boxes", min=2)
    exported = torch.export.export(
        model, (features, random_boxes(12, 128)), dynamic_shapes={"features": [None] * 4, "boxes": {0: num_boxes}}
    )
    for count in (3, 12, 40):
        boxes = random_boxes(count, 128)
        torch.testing.assert_close(exported.module()(features, boxes), model(features, boxes), rtol=0, atol=0)


def test_fused_pooler_and_mask_head_compile():
    """``torch.compile`` (the whole graph for the pooler, with breaks around ``Instances`` for the head)."""
    torch.manual_seed(0)
    model = _PoolBoxes(FusedROIPooler(output_size=7, scales=FPN_SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"))
    features = fpn_features(1, 4, 128, 96)
    torch._dynamo.reset()
    compiled_pooler = torch.compile(model, backend="aot_eager", fullgraph=True)
    for count in (5, 9):
        boxes = random_boxes(count, 128)
        torch.testing.assert_close(compiled_pooler(features, boxes), model(features, boxes))

    head = build_model(variant_cfg("boundary_mask_head")).roi_heads.mask_head.eval()
    compiled_head = torch.compile(head, backend="aot_eager")
    for count in (3, 6):
        region_features = torch.randn(count, 32, 14, 14)
        instances = Instances((128, 128), pred_classes=torch.randint(0, 5, (count,)))
        with torch.no_grad():
            expected = head(region_features, [copy.deepcopy(instances)])[0].pred_masks
            got = compiled_head(region_features, [copy.deepcopy(instances)])[0].pred_masks
        torch.testing.assert_close(got, expected)


# -------------------------------------------------------------------------------------------- heads
def _roi_heads_inputs(num_channels: int) -> tuple[ImageList, dict[str, Tensor], list[Instances]]:
    """Detectron2's StandardROIHeads scriptability inputs: two images, two proposals each, one res4 map."""
    images = ImageList(torch.rand(2, 20, 30), [(10, 10), (20, 30)])
    features = {"res4": torch.rand(2, num_channels, 1, 2)}
    proposals = []
    for size, boxes, logits in (
        ((10, 10), [[1, 1, 3, 3], [2, 2, 6, 6]], [0.5, 0.7]),
        ((20, 30), [[1, 5, 2, 8], [7, 3, 10, 5]], [0.1, 0.9]),
    ):
        proposal = Instances(size)
        proposal.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        proposal.objectness_logits = torch.tensor(logits)
        proposals.append(proposal)
    return images, features, proposals


@pytest.mark.parametrize(
    "opts",
    [[f"MODEL.ROI_MASK_HEAD.NAME={name}"] for name in MASK_HEADS]
    + [
        ["MODEL.ROI_MASK_HEAD.NAME=HighResMaskHead", "MODEL.ROI_MASK_HEAD.POOLER_TYPE=",
         "MODEL.ROI_MASK_HEAD.HIRES.FINE_FEATURE=res4"],
        ["MODEL.ROI_BOX_HEAD.NAME=DoubleConvFCHead"],
        ["MODEL.ROI_HEADS.NAME=MaskScoringROIHeads"],
    ],
    ids=lambda opts: opts[0].split("=")[1],
)
def test_roi_heads_script_with_each_head(opts: list[str]):
    """Detectron2's StandardROIHeads scriptability test with the plugin's ROI heads, pooler and heads."""
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_list(
        [
            "MODEL.ROI_HEADS.NAME", "MaskExtROIHeads", "MODEL.MASKEXT.POOLER", "fused", "MODEL.MASK_ON", "True",
            "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_FC", "2",
            "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignV2", "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", "(10, 10, 5, 5)",
            "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_BOX_HEAD.DOUBLE_HEAD.CONV_DIM", "64",
            "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_MASK_HEAD.NUM_CONV", "2",
            "MODEL.ROI_MASKIOU_HEAD.CONV_DIM", "32",
            "MODEL.ROI_MASKIOU_HEAD.FC_DIM", "64",
            "MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.01", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.01",
        ]  # fmt: skip
        + [item for opt in opts for item in opt.split("=")]
    )
    torch.manual_seed(0)
    roi_heads = build_roi_heads(cfg, {"res4": ShapeSpec(channels=64, stride=16)}).eval()
    assert all(isinstance(m, FusedROIPooler) for m in roi_heads.modules() if isinstance(m, ROIPooler))
    images, features, proposals = _roi_heads_inputs(64)
    expected, _ = roi_heads(images, features, copy.deepcopy(proposals))
    with freeze_training_mode(roi_heads), patch_instances(INSTANCE_FIELDS) as ScriptedInstances:
        scripted = torch.jit.script(roi_heads)
        got, _ = scripted(images, features, [ScriptedInstances.from_instances(p) for p in proposals])
    for want, have in zip(expected, got):
        assert_instances_allclose(want, have, rtol=0)


def test_double_head_box_head_scripts():
    """Detectron2's box-head scriptability test with the Double-Head box head."""
    head = DoubleConvFCHead(
        ShapeSpec(channels=64, height=7, width=7), conv_dims=[], fc_dims=[128, 128], reg_conv_dim=64, reg_num_blocks=2
    ).eval()
    features = torch.randn(4, 64, 7, 7)
    assert torch.equal(torch.jit.script(head)(features), head(features))


@pytest.mark.parametrize("variant", VARIANTS)
def test_scripting_preparation_creates_no_module_it_visits(variant: str):
    """TorchScript's preparation pass looks modules up by ``id()`` while freeing the ones Detectron2's backbone
    patches deep-copy: a module created during the pass could reuse a freed id and be swapped for a stale one.
    Each head's ``__prepare_scriptable__`` therefore only re-wires layers that existed before, and leaves the
    eager head (its names and checkpoint keys) as it was."""
    model = build_model(variant_cfg(variant))
    heads = [m for m in model.modules() if hasattr(m, "_scriptable_lists")]
    assert heads or variant in {"light_mask_head", "mask_loss_dice_boundary", "mask_scoring"}
    for head in heads:
        existing = {id(m) for m in head.modules()} | {id(m) for m in head.__dict__["_scriptable_lists"].values()}
        keys = list(head.state_dict())
        prepared = head.__prepare_scriptable__()
        assert prepared is not head
        assert all(id(m) in existing for m in prepared.modules() if m is not prepared)
        assert list(head.state_dict()) == keys
        assert not any(isinstance(m, nn.ModuleList) for m in head.children())


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_whole_model_scripts(variant: str):
    """Detectron2's Mask R-CNN scripting export (``scripting_with_instances``), save and load, batch of two
    images of different shapes, for every head variant with the fused pooler."""
    torch.manual_seed(0)
    model = build_model(variant_cfg(variant)).eval()
    scripted = reload_script_model(scripting_with_instances(model, INSTANCE_FIELDS))
    image = torch.rand(3, 128, 96) * 255
    inputs = [{"image": image}, {"image": image[:, :80, :64]}]
    with torch.no_grad():
        expected = model.inference(inputs, do_postprocess=False)
        got = scripted.inference(inputs, do_postprocess=False)
    assert len(expected[0]) > 0
    for want, have in zip(expected, got):
        assert_instances_allclose(want, have)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_whole_model_traces(variant: str):
    """Detectron2's tracing export: traced on a smaller image, saved, loaded and run on another size."""
    torch.manual_seed(0)
    model = build_model(variant_cfg(variant)).eval()
    image = torch.rand(3, 128, 96) * 255

    def inference(model: nn.Module, image: Tensor) -> Instances:
        return model.inference([{"image": image}], do_postprocess=False)[0]

    adapter = TracingAdapter(model, (image,), inference)
    with torch.no_grad():
        traced = reload_script_model(torch.jit.trace(adapter, (image[:, :96, :64],), check_trace=False))
        expected = inference(model, image)
        got = adapter.outputs_schema(traced(image))
    assert len(expected) > 0
    assert_instances_allclose(expected, got, size_as_tensor=True)
