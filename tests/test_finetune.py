"""Fine-tuning from a Detectron2 model-zoo checkpoint: other classes, a plugin head, one load report.

The checkpoint is written here in the model zoo's pickle format (numpy arrays, ``__author__``,
``matching_heuristics``) from a small synthetic model, so the test runs offline.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from helpers.train_net_runner import TINY_CONFIG

from d2_maskext.checkpoint import LoadReport, SafeCheckpointer
from d2_maskext.config import add_maskext_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ZOO_WEIGHTS = "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
CLASS_DEPENDENT = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_head.predictor.",
)


def tiny_cfg(*opts: str) -> CfgNode:
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(TINY_CONFIG))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.fixture(scope="module")
def zoo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A stock 5-class Mask R-CNN saved as Detectron2's model zoo saves its ``.pkl`` files."""
    torch.manual_seed(0)
    state = build_model(tiny_cfg("MODEL.ROI_HEADS.NAME", "StandardROIHeads")).state_dict()
    path = tmp_path_factory.mktemp("zoo") / "model_final.pkl"
    with path.open("wb") as f:
        arrays = {k: v.numpy() for k, v in state.items()}
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f)
    return path, state


@pytest.mark.parametrize(
    ("head_opts", "new_prefixes"),
    [
        (["MODEL.ROI_MASK_HEAD.NAME", "BoundaryMaskHead"], ("roi_heads.mask_head.boundary", "roi_heads.mask_head.mask_to_")),
        (["MODEL.ROI_HEADS.NAME", "MaskScoringROIHeads"], ("roi_heads.maskiou_head.",)),
    ],
    ids=["boundary_mask_head", "mask_scoring"],
)
def test_finetune_loads_shared_layers_and_logs_one_report(
    zoo_checkpoint, head_opts: list[str], new_prefixes: tuple[str, ...], caplog: pytest.LogCaptureFixture
):
    path, zoo_state = zoo_checkpoint
    cfg = tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.WEIGHTS", str(path), *head_opts)
    torch.manual_seed(1)
    model = build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO):
        SafeCheckpointer.from_config(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)

    loaded = model.state_dict()
    reshaped = {k for k in fresh if k.startswith(CLASS_DEPENDENT)}
    new = set(fresh) - set(zoo_state)
    assert len(reshaped) == 6 and new and all(k.startswith(new_prefixes) for k in new)
    for key, value in loaded.items():
        if key in reshaped or key in new:
            assert torch.equal(value, fresh[key]), f"{key} should keep its initialisation"
        else:
            assert torch.equal(value, zoo_state[key]), f"{key} should come from the checkpoint"

    reports = [r for r in caplog.records if r.getMessage().startswith("Model initialised from the checkpoint")]
    assert len(reports) == 1 and reports[0].levelno == logging.WARNING
    report = reports[0].getMessage()
    for key in reshaped:
        ckpt, now = tuple(zoo_state[key].shape), tuple(fresh[key].shape)
        assert f"{key}: {ckpt} in the checkpoint, {now} in the model" in report
    assert f"newly initialised, {len(new)} tensors" in report
    assert "unused" not in report
    # Detectron2's own per-key messages are folded into the report.
    stray = [r.getMessage() for r in caplog.records if "Shape of" in r.getMessage() or "Skip loading" in r.getMessage()]
    assert not stray and not any("matched with" in r.getMessage() for r in caplog.records)


def test_complete_load_is_reported_at_info_level(zoo_checkpoint, caplog):
    path, zoo_state = zoo_checkpoint
    cfg = tiny_cfg("MODEL.ROI_HEADS.NAME", "StandardROIHeads")
    with caplog.at_level(logging.INFO):
        SafeCheckpointer.from_config(cfg, build_model(cfg)).load(str(path))
    (report,) = [r for r in caplog.records if r.getMessage().startswith("Model initialised from the checkpoint")]
    assert report.levelno == logging.INFO
    assert report.getMessage().splitlines()[1].startswith(f"  loaded, {len(zoo_state)} tensors: backbone.")


def test_load_report_sorts_every_key_once():
    class Incompatible:
        missing_keys = ["head.new.weight", "head.cls.weight"]
        unexpected_keys = ["head.old.weight"]
        incorrect_shapes = [("head.cls.weight", (81, 4), (4, 4))]

    report = LoadReport.from_incompatible(["a.b.weight", "head.new.weight", "head.cls.weight"], Incompatible)
    assert report == LoadReport(
        loaded=("a.b.weight",),
        reshaped=(("head.cls.weight", (81, 4), (4, 4)),),
        new=("head.new.weight",),
        unused=("head.old.weight",),
    )
    assert not report.complete


@pytest.mark.parametrize("path", sorted((CONFIGS / "finetune").glob("[!B]*.yaml")), ids=lambda p: p.stem)
def test_finetune_configs_fit_the_zoo_checkpoint(path: Path):
    """Every tensor of Detectron2's COCO R50-FPN 3x model has a same-shaped place in the fine-tuning model,
    except the class-dependent layers."""
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(path))
    assert cfg.MODEL.WEIGHTS == ZOO_WEIGHTS
    zoo_cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    for c in (cfg, zoo_cfg):
        c.MODEL.DEVICE = "cpu"
    ours = {k: v.shape for k, v in build_model(cfg).state_dict().items()}
    zoo = {k: v.shape for k, v in build_model(zoo_cfg).state_dict().items()}
    mismatched = {k for k in zoo if ours.get(k) != zoo[k]}
    assert mismatched == {k for k in zoo if k.startswith(CLASS_DEPENDENT)}
