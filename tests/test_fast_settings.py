"""MaskExtRCNN's fast settings (channels-last, bfloat16): every component runs under them, boxes/losses/weights
stay float32, checkpoints interchange with stock, and a trained model detects the same objects."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage
from helpers.train_net_runner import REPO, tiny_cfg

from d2_maskext.engine import Trainer
from d2_maskext.modeling import precision
from d2_maskext.modeling.meta_arch import MaskExtRCNN
from d2_maskext.utils.image_io import read_image

FAST = ("MODEL.META_ARCHITECTURE", "MaskExtRCNN", "MODEL.MASKEXT.CHANNELS_LAST", "True",
        "MODEL.MASKEXT.PRECISION", "bfloat16")
VARIANTS = [REPO / "configs" / "quick_schedules" / "mask_rcnn_R18_FPN_GN_tiny.yaml",
            *sorted((REPO / "configs" / "synthetic" / "variants").glob("*.yaml"))]
TOP_DETECTIONS = 3
CONFIDENT_SCORE = 0.2
# bfloat16 moves a 20-pixel box of the barely trained tiny model by up to about half a pixel: over ten training
# seeds the top detections' IoU with their float32 counterparts was 0.954 at worst and 0.989 to 0.996 on average.
MIN_BOX_IOU = 0.9
MIN_MEAN_BOX_IOU = 0.98
EVERY_PAIR = ("MODEL.RPN.NMS_THRESH", "1.0", "MODEL.RPN.PRE_NMS_TOPK_TEST", "100000",
              "MODEL.RPN.POST_NMS_TOPK_TEST", "100000", "MODEL.ROI_HEADS.NMS_THRESH_TEST", "1.0",
              "TEST.DETECTIONS_PER_IMAGE", "1000")
LOW = torch.bfloat16 if precision.cpu_supports_fast_bfloat16() else torch.float32
TRAINING_LAYOUT = torch.channels_last if precision.cpu_supports_fast_bfloat16() else torch.contiguous_format


def _record_p2(model: torch.nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.backbone.register_forward_hook(lambda module, inputs, output: seen.append(output["p2"]))
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("config", VARIANTS, ids=lambda p: p.stem)
def test_every_head_variant_trains_and_infers_in_channels_last_bfloat16(tmp_path, config: Path):
    trainer = Trainer(tiny_cfg(tmp_path, *FAST, "SOLVER.MAX_ITER", "1", config=config))
    model = trainer.model
    features = _record_p2(model)
    trainer.train()

    # Training runs channels-last where the CPU has native bfloat16, NCHW elsewhere (see the test below).
    assert features[0].dtype == LOW and features[0].is_contiguous(memory_format=TRAINING_LAYOUT)
    losses = trainer.storage.latest()
    loss_names = [k for k in losses if k.startswith("loss_")]
    assert "loss_mask" in loss_names and all(math.isfinite(losses[k][0]) for k in loss_names), losses
    assert all(p.dtype == torch.float32 for p in model.parameters())

    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8)}])[0]["instances"]
    assert features[-1].dtype == LOW and features[-1].is_contiguous(memory_format=torch.channels_last)
    assert out.pred_boxes.tensor.dtype == torch.float32 and out.scores.dtype == torch.float32
    assert out.pred_masks.dtype == torch.bool and out.pred_masks.shape[1:] == (128, 128)


@pytest.mark.slow
@pytest.mark.parametrize("pooler_type", ["ROIAlign", "ROIAlignV2", "ROIPool"])
@pytest.mark.parametrize("mixed_precision", ["model", "solver"])
def test_every_pooler_type_trains_under_mixed_precision(tmp_path, pooler_type: str, mixed_precision: str):
    opts = FAST if mixed_precision == "model" else ("SOLVER.AMP.ENABLED", "True")
    pooler = "fused" if pooler_type != "ROIPool" else "stock"
    trainer = Trainer(tiny_cfg(
        tmp_path, *opts, "SOLVER.MAX_ITER", "1", "MODEL.MASKEXT.POOLER", pooler,
        "MODEL.ROI_BOX_HEAD.POOLER_TYPE", pooler_type, "MODEL.ROI_MASK_HEAD.POOLER_TYPE", pooler_type,
    ))
    trainer.train()
    assert math.isfinite(trainer.storage.latest()["total_loss"][0])


def test_float16_is_refused_on_cpu(tmp_path):
    """Before training starts; float16 without loss scaling on GPU is refused too (tests/test_precision.py)."""
    with pytest.raises(ValueError, match="float16 is not supported on CPU"):
        precision.resolve_compute_settings(False, torch.float16, "cpu")
    with pytest.raises(ValueError, match="float16 is not supported on CPU"):
        Trainer(tiny_cfg(tmp_path, "MODEL.META_ARCHITECTURE", "MaskExtRCNN", "MODEL.MASKEXT.PRECISION", "float16"))
    # Building such a model is not refused: Detectron2 builds every model on the CPU before moving it to its
    # device, which for float16 is a GPU.
    model = build_model(tiny_cfg(tmp_path, "MODEL.META_ARCHITECTURE", "MaskExtRCNN", "MODEL.MASKEXT.PRECISION",
                                 "float16", "MODEL.MASKEXT.CHANNELS_LAST", "True")).eval()  # fmt: skip
    assert _weights_layout(model) == torch.channels_last


def test_cpu_without_native_bfloat16_runs_float32_channels_last_with_one_warning(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(precision, "cpu_supports_fast_bfloat16", lambda: False)
    monkeypatch.setattr(precision, "_warned", set())
    model = build_model(tiny_cfg(tmp_path, *FAST)).eval()
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        for _ in range(2):
            assert model.compute_settings == precision.ComputeSettings(channels_last=True, autocast_dtype=None)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "no native bfloat16" in r.getMessage()]
    assert len(warnings) == 1 and "running float32 instead" in warnings[0].getMessage()


def _weights_layout(model: torch.nn.Module) -> torch.memory_format:
    convolutions = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if all(w.is_contiguous() for w in convolutions):
        return torch.contiguous_format
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    return torch.channels_last


@pytest.mark.parametrize("native_bfloat16", [True, False])
def test_channels_last_training_only_where_the_cpu_has_native_bfloat16(monkeypatch, caplog, tmp_path, native_bfloat16):
    """Channels-last backward is slower than NCHW on a CPU without native bfloat16 (R50-FPN training 0.74x stock on
    an AVX2-only EPYC), so there the weights and inputs switch to NCHW for training and back for inference."""
    monkeypatch.setattr(precision, "cpu_supports_fast_bfloat16", lambda: native_bfloat16)
    monkeypatch.setattr(precision, "_warned", set())
    training_layout = torch.channels_last if native_bfloat16 else torch.contiguous_format
    with caplog.at_level(logging.INFO, logger=precision.__name__):
        model = build_model(tiny_cfg(tmp_path, "MODEL.META_ARCHITECTURE", "MaskExtRCNN", "MODEL.MASKEXT.CHANNELS_LAST", "True"))
    features = _record_p2(model)
    mask = torch.zeros(1, 128, 128, dtype=torch.bool)
    mask[:, 10:60, 10:60] = True
    target = Instances((128, 128), gt_boxes=Boxes(torch.tensor([[10.0, 10, 60, 60]])), gt_classes=torch.tensor([1]),
                       gt_masks=BitMasks(mask))  # fmt: skip
    image = {"image": torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8), "instances": target}
    for training, layout in ((True, training_layout), (False, torch.channels_last), (True, training_layout)):
        model.train(training)
        assert _weights_layout(model) == layout
        assert model.compute_settings.channels_last == (layout == torch.channels_last)
        with EventStorage(), torch.set_grad_enabled(training):
            model([image])
        assert features[-1].is_contiguous(memory_format=layout)
    said = [r.getMessage() for r in caplog.records if "training runs NCHW" in r.getMessage()]
    assert len(said) == (0 if native_bfloat16 else 1)


def test_checkpoints_interchange_with_stock_generalized_rcnn(tmp_path):
    fast = build_model(tiny_cfg(tmp_path, *FAST))
    assert isinstance(fast, MaskExtRCNN)
    DetectionCheckpointer(fast, save_dir=str(tmp_path)).save("fast")
    state = torch.load(tmp_path / "fast.pth", weights_only=True)["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())

    stock = build_model(tiny_cfg(tmp_path))
    assert type(stock).__name__ == "GeneralizedRCNN"
    DetectionCheckpointer(stock).load(str(tmp_path / "fast.pth"))
    for name, value in stock.state_dict().items():
        assert torch.equal(value, fast.state_dict()[name]), name
    DetectionCheckpointer(stock, save_dir=str(tmp_path)).save("stock")
    reloaded = build_model(tiny_cfg(tmp_path, *FAST))
    DetectionCheckpointer(reloaded).load(str(tmp_path / "stock.pth"))
    assert all(torch.equal(v, fast.state_dict()[k]) for k, v in reloaded.state_dict().items())


def test_float32_maskext_rcnn_predicts_exactly_like_generalized_rcnn(tmp_path):
    torch.manual_seed(0)
    stock = build_model(tiny_cfg(tmp_path, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")).eval()
    plugin = build_model(tiny_cfg(tmp_path, "MODEL.META_ARCHITECTURE", "MaskExtRCNN",
                                  "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")).eval()
    plugin.load_state_dict(stock.state_dict())
    image = {"image": torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8), "height": 200, "width": 250}
    with torch.no_grad():
        a, b = stock([image])[0]["instances"], plugin([image])[0]["instances"]
        raw = stock.inference([image], do_postprocess=False)[0]
    assert len(a) > 0
    for field in ("pred_boxes", "scores", "pred_classes"):
        x, y = a.get(field), b.get(field)
        x, y = (x.tensor, y.tensor) if isinstance(x, Boxes) else (x, y)
        assert torch.equal(x, y), field
    # The plugin pastes masks by separable matrix products, Detectron2 by grid_sample: the same bilinear values
    # summed in another order. A pixel may flip only where Detectron2's value rounds across the threshold (seen
    # on an AVX2-only CPU: 1 pixel of 6,159); every other pixel is equal.
    boxes = raw.pred_boxes.tensor * torch.tensor([250 / 160, 200 / 128] * 2)
    soft, _ = _do_paste_mask(raw.pred_masks, boxes, 200, 250, skip_empty=False)
    flipped = a.pred_masks != b.pred_masks
    assert flipped.sum() <= 0.001 * a.pred_masks.sum(), flipped.sum()
    assert ((soft[flipped] - 0.5).abs() < 1e-5).all(), soft[flipped]


def _float32_and_fast_detections(tmp_path: Path, weights: Path, *opts: str):
    """Yield ``(file name, float32 instances, fast instances)`` for each tiny val image, same weights."""
    models = []
    for settings in ((), FAST):
        model = build_model(tiny_cfg(tmp_path, *settings, *opts))
        DetectionCheckpointer(model).load(str(weights))
        models.append(model.eval())
    for record in DatasetCatalog.get("maskext_synth_tiny_val"):
        image = torch.as_tensor(read_image(record["file_name"], "BGR").transpose(2, 0, 1).copy())
        with torch.no_grad():
            yield record["file_name"], *(model([{"image": image}])[0]["instances"] for model in models)


@pytest.mark.slow
def test_fast_settings_find_as_many_objects_as_float32(tmp_path, tiny_trained_weights: Path):
    # Counted over the split, without the tiny config's cap of 10: near-tied boxes may survive suppression in
    # one precision and not the other, so single images differ by a detection or two.
    counts = {"float32": [], "fast": []}
    for _, ref, fast in _float32_and_fast_detections(tmp_path, tiny_trained_weights, "TEST.DETECTIONS_PER_IMAGE", "100"):
        counts["float32"].append(len(ref))
        counts["fast"].append(len(fast))
    assert sum(counts["float32"]) > 0
    assert abs(sum(counts["float32"]) - sum(counts["fast"])) <= sum(counts["float32"]) / 10, counts


@pytest.mark.slow
def test_fast_settings_give_each_top_detection_the_same_class_and_box(tmp_path, tiny_trained_weights: Path):
    # Every (proposal, class) pair is kept, so each detection has its own counterpart in the other precision.
    # With suppression on, a barely trained model's clusters of near-tied boxes let either precision keep a
    # different member, and the comparison would test tie-breaking instead of the fast settings.
    ious = []
    for file_name, ref, fast in _float32_and_fast_detections(tmp_path, tiny_trained_weights, *EVERY_PAIR):
        for a, b in ((ref, fast), (fast, ref)):
            a = a[a.scores.argsort(descending=True)[:TOP_DETECTIONS]]
            a = a[a.scores >= CONFIDENT_SCORE]
            if len(a) == 0:
                continue
            assert len(b) > 0, (file_name, "confident detections in one precision, none in the other")
            iou = pairwise_iou(a.pred_boxes, b.pred_boxes)
            iou[a.pred_classes[:, None] != b.pred_classes[None, :]] = 0
            best = iou.max(dim=1).values
            assert bool((best > MIN_BOX_IOU).all()), (file_name, best, a.scores)
            ious += best.tolist()
    assert len(ious) > 0, "no confident detection to compare"
    assert sum(ious) / len(ious) > MIN_MEAN_BOX_IOU, ious
