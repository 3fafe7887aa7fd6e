"""Head variants: targets on hand-built masks, training on a fixed batch, inference, checkpoints, tracing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead, mask_rcnn_loss
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from helpers.train_net_runner import shrink_to_tiny

from d2_maskext.config import add_maskext_config
from d2_maskext.data.mappers import build_mapper
from d2_maskext.layers import FusedROIPooler
from d2_maskext.modeling.roi_heads import (
    BoundaryMaskHead,
    DoubleHeadOutputLayers,
    HighResMaskHead,
    LightMaskHead,
    MaskExtConvUpsampleHead,
    MaskLoss,
    MaskScoringROIHeads,
)
from d2_maskext.modeling.roi_heads.mask_losses import (
    dice_loss,
    mask_boundary,
    options_changing_stock_loss,
    select_mask_targets,
)
from d2_maskext.modeling.roi_heads.maskiou_head import mask_iou_targets

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = CONFIGS / "synthetic" / "Base-Synthetic-R18-GN.yaml"
VARIANTS = sorted(p.stem for p in (CONFIGS / "synthetic" / "variants").glob("*.yaml"))
HAS_FUSED_POOLER = importlib.util.find_spec("d2_maskext.layers.fused_pooler") is not None
POOLERS = ["stock", pytest.param("fused", marks=pytest.mark.skipif(not HAS_FUSED_POOLER, reason="no fused pooler yet"))]
# Loss terms each variant adds to Detectron2's (loss_cls, loss_box_reg, loss_mask, RPN losses).
EXTRA_LOSSES = {
    "mask_scoring": {"loss_maskiou"},
    "boundary_mask_head": {"loss_boundary_bce", "loss_boundary_dice"},
    "mask_loss_dice_boundary": {"loss_mask_dice"},
}
# Parameters a variant adds to a stock Mask R-CNN (the only keys a stock checkpoint may miss).
NEW_PARAMETER_PREFIXES = {
    "mask_scoring": ("roi_heads.maskiou_head.",),
    "boundary_mask_head": tuple(
        f"roi_heads.mask_head.{n}"
        for n in ("boundary_fcn", "mask_to_boundary.", "boundary_to_mask.", "boundary_deconv.", "boundary_predictor.")
    ),
    "hires_mask_head": tuple(f"roi_heads.mask_head.{n}" for n in ("fine_lateral.", "refine_fcn", "refine_deconv.")),
    "light_mask_head": ("roi_heads.mask_head.",),
    "double_head": ("roi_heads.box_head.reg_blocks.", "roi_heads.box_predictor.conv_bbox_pred."),
    "mask_loss_dice_boundary": (),
}


def tiny_cfg(config: Path | str, *opts: str) -> CfgNode:
    path = CONFIGS / "synthetic" / "variants" / f"{config}.yaml" if isinstance(config, str) else config
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(path))
    shrink_to_tiny(cfg)  # every head keeps its structure, only widths shrink
    cfg.merge_from_list(["INPUT.RANDOM_FLIP", "none", *opts])
    return cfg


@pytest.fixture(scope="module")
def fixed_batch() -> list[dict]:
    cfg = tiny_cfg(BASE)
    mapper = build_mapper(cfg, is_train=True)
    return [mapper(dict(r)) for r in DatasetCatalog.get("maskext_synth_tiny_train")[:2]]


def _instances(masks: torch.Tensor, boxes: list[list[float]], classes: list[int]) -> Instances:
    inst = Instances(tuple(masks.shape[1:]))
    inst.gt_masks = BitMasks(masks.bool())
    inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.tensor(classes)
    return inst


# ------------------------------------------------------------------------------------------ targets
def test_mask_iou_targets_equal_hand_computed_ious():
    gt = torch.zeros(4, 4, 4)
    gt[0, :2, :2] = 1  # 4 px
    gt[1, :2, :3] = 1  # 6 px
    gt[2, :2, :2] = 1
    pred = torch.full((4, 4, 4), -5.0)
    pred[0, :2, :2] = 5  # identical -> 1
    pred[1, :2, :2] = 5  # 4 px inside 6 px -> 4/6
    pred[2, 2:, 2:] = 5  # disjoint -> 0
    pred[3, 0, :] = 0.5  # 4 px vs empty GT -> 0
    assert torch.allclose(mask_iou_targets(pred, gt), torch.tensor([1.0, 4 / 6, 0.0, 0.0]))
    assert mask_iou_targets(torch.full((1, 4, 4), -1.0), torch.zeros(1, 4, 4)).item() == 0.0  # nothing to score
    half = torch.zeros(1, 4, 4)
    half[0, :, :2] = 1
    cross = torch.full((1, 4, 4), -1.0)
    cross[0, 1:3, 1:3] = 1.0  # 2 of its 4 px in the GT half: IoU = 2 / (8 + 4 - 2)
    assert torch.allclose(mask_iou_targets(cross, half), torch.tensor([0.2]))


def test_mask_boundary_equals_hand_computed_boundary():
    square = torch.zeros(1, 6, 6)
    square[0, 1:5, 1:5] = 1
    ring = square.clone()
    ring[0, 2:4, 2:4] = 0  # the 4x4 square's 12 edge pixels
    assert torch.equal(mask_boundary(square), ring)
    assert torch.equal(mask_boundary(square, width=2), square)  # every pixel is within 2 px of background

    corner = torch.zeros(1, 5, 5)
    corner[0, :3, :3] = 1  # touches the crop border: only the sides facing background are boundary
    expected = torch.zeros(1, 5, 5)
    expected[0, 2, :3] = 1
    expected[0, :3, 2] = 1
    assert torch.equal(mask_boundary(corner), expected)
    assert mask_boundary(torch.ones(1, 4, 4)).sum() == 0


def test_mask_targets_use_detectron2_rasterization_and_gt_class():
    masks = torch.zeros(2, 16, 16)
    masks[0, 4:12, 4:8] = 1
    masks[1, 2:6, 2:14] = 1
    inst = _instances(masks, [[4, 4, 12, 12], [0, 0, 16, 8]], [2, 0])
    logits = torch.randn(2, 3, 8, 8)
    targets = select_mask_targets(logits, [inst])
    assert torch.equal(targets.logits, torch.stack([logits[0, 2], logits[1, 0]]))
    assert torch.equal(targets.masks.bool(), inst.gt_masks.crop_and_resize(inst.proposal_boxes.tensor, 8))
    assert torch.equal(targets.masks[0, :, :4], torch.ones(8, 4))  # left half of the box is the object
    agnostic = select_mask_targets(logits[:, :1], [inst])
    assert torch.equal(agnostic.logits, logits[:, 0])


def test_mask_loss_defaults_equal_detectron2_and_options_change_it():
    torch.manual_seed(0)
    masks = (torch.rand(3, 20, 20) > 0.5).float()
    inst = _instances(masks, [[0, 0, 20, 20], [2, 2, 15, 18], [5, 0, 20, 10]], [0, 1, 1])
    logits = torch.randn(3, 2, 7, 7)
    with EventStorage():
        stock = mask_rcnn_loss(logits, [inst])
        plain = MaskLoss()(logits, [inst])
        both = MaskLoss(dice_weight=0.5, boundary_bce_weight=3.0)(logits, [inst])
    assert set(plain) == {"loss_mask"} and torch.allclose(plain["loss_mask"], stock)
    targets = select_mask_targets(logits, [inst])
    assert torch.allclose(both["loss_mask_dice"], 0.5 * dice_loss(targets.logits, targets.masks))
    assert not torch.allclose(both["loss_mask"], stock)
    perfect = 20.0 * (2 * targets.masks - 1)
    assert dice_loss(perfect, targets.masks) < 0.01 < dice_loss(-perfect, targets.masks)


def test_mask_loss_without_foreground_is_zero_with_gradient():
    logits = torch.randn(0, 5, 28, 28, requires_grad=True)
    losses = MaskLoss(dice_weight=1.0)(logits, [_instances(torch.zeros(0, 8, 8), [], [])])
    assert all(v.item() == 0 for v in losses.values())
    sum(losses.values()).backward()


# ----------------------------------------------------------------------------------------- training
@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_on_fixed_batch_with_decreasing_loss(variant: str, fixed_batch: list[dict]):
    cfg = tiny_cfg(variant)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    history = []
    with EventStorage():
        for _ in range(6):
            losses = model(fixed_batch)
            total = sum(losses.values())
            assert all(torch.isfinite(v) for v in losses.values()), losses
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append({k: v.item() for k, v in losses.items()})
    expected = {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} | EXTRA_LOSSES.get(variant, set())
    assert set(history[0]) == expected
    totals = [sum(h.values()) for h in history]
    assert max(totals[-2:]) < totals[0], totals
    extra = EXTRA_LOSSES.get(variant)
    if extra:  # the variant's own loss goes down too (summed: Dice on boundaries starts flat while BCE drops)
        own = [sum(h[name] for name in extra) for h in history]
        assert max(own[-2:]) < own[0], own


def test_mask_scoring_composes_with_plugin_mask_heads(fixed_batch: list[dict]):
    """MaskScoringROIHeads takes its mask loss from whichever head is configured (here the boundary head)."""
    cfg = tiny_cfg("mask_scoring", "MODEL.ROI_MASK_HEAD.NAME", "BoundaryMaskHead", "MODEL.ROI_MASK_HEAD.LOSS.DICE_WEIGHT", "1.0")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    with EventStorage():
        losses = model(fixed_batch)
    assert {"loss_maskiou", "loss_mask_dice", "loss_boundary_bce", "loss_boundary_dice"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


# ---------------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("pooler", POOLERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_inference_returns_scored_instances(variant: str, pooler: str, fixed_batch: list[dict]):
    cfg = tiny_cfg(variant, "MODEL.MASKEXT.POOLER", pooler, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    poolers = [type(m).__name__ for m in model.modules() if isinstance(m, ROIPooler)]
    assert set(poolers) == {"FusedROIPooler" if pooler == "fused" else "ROIPooler"}, poolers
    image = fixed_batch[0]["image"]
    with torch.no_grad():
        raw = model.inference([{"image": image}], do_postprocess=False)[0]
        pasted = model([{"image": image, "height": 100, "width": 90}])[0]["instances"]
    side = 4 * cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION if variant == "hires_mask_head" else 28
    assert len(raw) == cfg.TEST.DETECTIONS_PER_IMAGE
    assert raw.pred_masks.shape == (len(raw), 1, side, side)
    assert isinstance(pasted, Instances) and pasted.image_size == (100, 90)
    assert pasted.pred_masks.shape == (len(pasted), 100, 90)
    assert ((raw.scores >= 0) & (raw.scores <= 1)).all()
    if variant == "mask_scoring":
        assert ((raw.pred_maskiou >= 0) & (raw.pred_maskiou <= 1)).all()
        assert (raw.scores <= raw.pred_maskiou + 1e-6).all()  # score = class score x mask IoU


# --------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def stock_state_dict() -> dict[str, torch.Tensor]:
    """A stock Detectron2 Mask R-CNN (StandardROIHeads, default heads) of the same base config."""
    torch.manual_seed(0)
    return build_model(tiny_cfg(BASE, "MODEL.ROI_HEADS.NAME", "StandardROIHeads")).state_dict()


@pytest.mark.parametrize("variant", VARIANTS)
def test_stock_checkpoint_loads_with_only_new_parameters_missing(variant: str, stock_state_dict: dict):
    model = build_model(tiny_cfg(variant))
    incompatible = DetectionCheckpointer(model)._load_model({"model": dict(stock_state_dict)})
    variant_keys = set(model.state_dict())
    new = {k for k in variant_keys if k.startswith(NEW_PARAMETER_PREFIXES[variant])}
    assert set(incompatible.missing_keys) == new == variant_keys - set(stock_state_dict)
    assert not incompatible.incorrect_shapes
    assert set(incompatible.unexpected_keys) == set(stock_state_dict) - variant_keys
    for key in variant_keys - new:  # everything shared was really loaded
        assert torch.equal(model.state_dict()[key], stock_state_dict[key]), key


def test_boundary_head_with_stock_weights_predicts_stock_masks(stock_state_dict: dict):
    """``boundary_to_mask`` starts at zero, so a stock checkpoint gives exactly stock's masks."""
    stock = build_model(tiny_cfg(BASE, "MODEL.ROI_HEADS.NAME", "StandardROIHeads")).eval()
    stock.load_state_dict(stock_state_dict)
    boundary = build_model(tiny_cfg("boundary_mask_head")).eval()
    DetectionCheckpointer(boundary)._load_model({"model": dict(stock_state_dict)})
    x = torch.randn(3, 32, 14, 14)
    assert torch.allclose(boundary.roi_heads.mask_head.layers(x), stock.roi_heads.mask_head.layers(x), atol=1e-6)


# ------------------------------------------------------------------------------------------- tracing
@pytest.mark.parametrize("variant", ["mask_loss_dice_boundary", "boundary_mask_head", "light_mask_head"])
def test_mask_head_layers_trace(variant: str):
    head = build_model(tiny_cfg(variant)).roi_heads.mask_head.eval()
    assert isinstance(head, (MaskExtConvUpsampleHead, BoundaryMaskHead, LightMaskHead))
    x = torch.randn(4, 32, 14, 14)
    traced = torch.jit.trace_module(head, {"layers": (x,)})
    y = torch.randn(7, 32, 14, 14)
    assert torch.allclose(traced.layers(y), head.layers(y), atol=1e-5)


# ------------------------------------------------------------------------------------ one-line swaps
@pytest.mark.parametrize(
    ("key", "name", "module", "expected_type"),
    [
        ("MODEL.ROI_HEADS.NAME", "MaskScoringROIHeads", "roi_heads", MaskScoringROIHeads),
        ("MODEL.ROI_MASK_HEAD.NAME", "BoundaryMaskHead", "roi_heads.mask_head", BoundaryMaskHead),
        ("MODEL.ROI_MASK_HEAD.NAME", "LightMaskHead", "roi_heads.mask_head", LightMaskHead),
        ("MODEL.ROI_MASK_HEAD.NAME", "MaskExtConvUpsampleHead", "roi_heads.mask_head", MaskExtConvUpsampleHead),
        ("MODEL.ROI_BOX_HEAD.NAME", "DoubleConvFCHead", "roi_heads.box_predictor", DoubleHeadOutputLayers),
    ],
)
def test_each_variant_is_selected_by_its_name_line_alone(key: str, name: str, module: str, expected_type: type):
    model = build_model(tiny_cfg(BASE, key, name))
    assert isinstance(model.get_submodule(module), expected_type)


@pytest.mark.parametrize("pooler", POOLERS)
def test_hires_head_pools_its_own_features_with_its_pooler_keys(pooler: str):
    """The ROI heads build no mask pooler for it; its own poolers follow ``ROI_MASK_HEAD.HIRES.POOLER_TYPE``."""
    roi_heads = build_model(tiny_cfg("hires_mask_head", "MODEL.MASKEXT.POOLER", pooler)).roi_heads
    assert roi_heads.mask_pooler is None
    head = roi_heads.mask_head
    for own_pooler, size in ((head.coarse_pooler, 14), (head.fine_pooler, 28)):
        assert type(own_pooler) is (FusedROIPooler if pooler == "fused" else ROIPooler)
        assert own_pooler.output_size == (size, size) and own_pooler.level_poolers[0].aligned
    unaligned = build_model(tiny_cfg("hires_mask_head", "MODEL.ROI_MASK_HEAD.HIRES.POOLER_TYPE", "ROIAlign")).roi_heads
    assert not unaligned.mask_head.coarse_pooler.level_poolers[0].aligned


def test_hires_head_config_errors_name_the_key():
    with pytest.raises(ValueError, match="HIRES.POOLER_TYPE: set it to a pooler type"):
        build_model(tiny_cfg("hires_mask_head", "MODEL.ROI_MASK_HEAD.HIRES.POOLER_TYPE", ""))
    with pytest.raises(ValueError, match="FINE_FEATURE"):
        build_model(tiny_cfg("hires_mask_head", "MODEL.ROI_MASK_HEAD.HIRES.FINE_FEATURE", "p1"))
    with pytest.raises(ValueError, match="pools its own features: set MODEL.ROI_MASK_HEAD.POOLER_TYPE to ''"):
        build_model(tiny_cfg("hires_mask_head", "MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlignV2"))


def test_hires_head_runs_under_detectron2_roi_heads(fixed_batch: list[dict]):
    """An empty POOLER_TYPE is Detectron2's own convention, so stock StandardROIHeads passes it the features."""
    model = build_model(tiny_cfg("hires_mask_head", "MODEL.ROI_HEADS.NAME", "StandardROIHeads")).train()
    assert model.roi_heads.mask_pooler is None and isinstance(model.roi_heads.mask_head, HighResMaskHead)
    with EventStorage():
        assert "loss_mask" in model(fixed_batch)


def test_double_head_needs_roi_heads_that_build_its_predictor():
    with pytest.raises(ValueError, match="DoubleConvFCHead needs ROI heads.*use MaskExtROIHeads"):
        build_model(tiny_cfg("double_head", "MODEL.ROI_HEADS.NAME", "StandardROIHeads"))


def test_double_head_composes_with_mask_scoring(fixed_batch: list[dict]):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("double_head", "MODEL.ROI_HEADS.NAME", "MaskScoringROIHeads")).train()
    with EventStorage():
        losses = model(fixed_batch)
    assert {"loss_maskiou", "loss_box_reg"} <= set(losses)
    assert isinstance(model.roi_heads.box_predictor, DoubleHeadOutputLayers)


def test_mask_scoring_requires_pooled_mask_features():
    with pytest.raises(ValueError, match="POOLER_TYPE"):
        build_model(tiny_cfg("mask_scoring", "MODEL.ROI_MASK_HEAD.POOLER_TYPE", ""))
    with pytest.raises(ValueError, match="needs pooled mask features.*'HighResMaskHead'"):
        build_model(tiny_cfg("mask_scoring", "MODEL.ROI_MASK_HEAD.NAME", "HighResMaskHead", "MODEL.ROI_MASK_HEAD.POOLER_TYPE", ""))


@pytest.mark.parametrize(("key", "value"), [("DICE_WEIGHT", "1.0"), ("BOUNDARY_BCE_WEIGHT", "2.0"), ("WEIGHT", "0.5")])
def test_loss_options_on_detectron2_mask_head_raise_and_name_the_plugin_head(key: str, value: str):
    """Detectron2's MaskRCNNConvUpsampleHead keeps its plain BCE: the options would be silently ignored."""
    with pytest.raises(ValueError, match=f"ignore MODEL.ROI_MASK_HEAD.LOSS.{key}.*MaskExtConvUpsampleHead"):
        build_model(tiny_cfg(BASE, f"MODEL.ROI_MASK_HEAD.LOSS.{key}", value))
    plugin_head = tiny_cfg(BASE, f"MODEL.ROI_MASK_HEAD.LOSS.{key}", value, "MODEL.ROI_MASK_HEAD.NAME", "MaskExtConvUpsampleHead")
    assert isinstance(build_model(plugin_head).roi_heads.mask_head, MaskExtConvUpsampleHead)


def test_default_loss_options_are_detectron2_loss():
    """Stock heads under MaskExtROIHeads are refused only for options that change Detectron2's loss."""
    assert options_changing_stock_loss(add_maskext_config(get_cfg())) == []
    assert isinstance(build_model(tiny_cfg(BASE, "MODEL.ROI_MASK_HEAD.LOSS.BOUNDARY_WIDTH", "2")).roi_heads.mask_head,
                      MaskRCNNConvUpsampleHead)
