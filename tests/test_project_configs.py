"""Detectron2 project heads in the plugin: the YAML tools accept PointRend's keys, and PointRend's mask head runs
inside the plugin's model (``MaskExtRCNN``, ``MaskExtROIHeads``, fused pooler, fast settings) as it does in stock."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import pytest
import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers.train_net_runner import TINY_CONFIG, load_script, shrink_to_tiny

from d2_maskext.cli.config_loading import load_config, read_yaml_config, register_project_config
from d2_maskext.config import add_maskext_config
from d2_maskext.data.mappers import build_mapper
from d2_maskext.layers import FusedROIPooler

REPO = Path(__file__).resolve().parents[1]
POINTREND = REPO / "configs" / "synthetic" / "peers" / "pointrend.yaml"
BASE = REPO / "configs" / "synthetic" / "Base-Synthetic-R18-GN.yaml"
FAST = ["MODEL.META_ARCHITECTURE", "MaskExtRCNN", "MODEL.MASKEXT.POOLER", "fused"]


def tiny_pointrend(*opts: str):
    cfg = read_yaml_config(POINTREND)
    shrink_to_tiny(cfg)
    cfg.merge_from_list(["INPUT.RANDOM_FLIP", "none", "MODEL.ROI_MASK_HEAD.FC_DIM", "64", *opts])
    return cfg


@pytest.fixture(scope="module")
def batch() -> list[dict]:
    mapper = build_mapper(tiny_pointrend(), is_train=True)
    return [mapper(dict(r)) for r in DatasetCatalog.get("maskext_synth_tiny_train")[:2]]


def test_pointrend_keys_are_added_only_when_a_config_sets_one(tmp_path: Path):
    assert read_yaml_config(POINTREND).MODEL.POINT_HEAD.NUM_CLASSES == 5
    plain = read_yaml_config(BASE)
    assert "POINT_HEAD" not in plain.MODEL
    assert plain.dump() == _merged(BASE).dump()  # stock configs read exactly as before
    from_override = read_yaml_config(BASE, ["MODEL.POINT_HEAD.NUM_CLASSES", "5"])
    assert from_override.MODEL.POINT_HEAD.NUM_CLASSES == 5 and from_override.MODEL.ROI_MASK_HEAD.FC_DIM == 1024
    child = tmp_path / "child.yaml"  # a key set only in a _BASE_ counts too
    child.write_text(f'_BASE_: "{POINTREND}"\nSOLVER:\n  MAX_ITER: 7\n')
    assert load_config(child).config.MODEL.ROI_MASK_HEAD.POINT_HEAD_ON is True
    typo = tmp_path / "typo.yaml"
    typo.write_text(f'_BASE_: "{BASE}"\nMODEL:\n  ROI_MASK_HEAD:\n    FC_DIMS: 3\n')
    with pytest.raises(KeyError, match="FC_DIMS"):
        read_yaml_config(typo)
    with pytest.raises(ValueError, match="module:function"):
        register_project_config("add_pointrend_config")


def _merged(path: Path):
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(path))
    return cfg


@pytest.mark.parametrize("fast", [False, True], ids=["float32", "bfloat16_channels_last"])
def test_pointrend_trains_and_predicts_inside_the_plugin_model(fast: bool, batch: list[dict]):
    extra = ["MODEL.MASKEXT.PRECISION", "bfloat16", "MODEL.MASKEXT.CHANNELS_LAST", "True"] if fast else []
    cfg = tiny_pointrend(*FAST, *extra, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model).__name__ == "MaskExtRCNN" and type(model.roi_heads).__name__ == "MaskExtROIHeads"
    assert isinstance(model.roi_heads.box_pooler, FusedROIPooler)
    assert type(model.roi_heads.mask_head).__name__ == "PointRendMaskHead"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage():
        for _ in range(2):
            losses = model.train()(batch)
            assert {"loss_mask", "loss_mask_point"} <= set(losses)
            assert all(torch.isfinite(v) for v in losses.values()), losses
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    with torch.no_grad():
        out = model.eval()([{"image": batch[0]["image"], "height": 100, "width": 90}])[0]["instances"]
    assert len(out) > 0 and out.pred_masks.shape == (len(out), 100, 90)


def test_pointrend_in_the_plugin_model_predicts_what_stock_pointrend_does(batch: list[dict]):
    """Same weights: Detectron2's GeneralizedRCNN + PointRendROIHeads, and MaskExtRCNN + MaskExtROIHeads with the
    fused pooler."""
    stock_cfg = tiny_pointrend("MODEL.ROI_HEADS.NAME", "PointRendROIHeads", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    torch.manual_seed(0)
    stock = build_model(stock_cfg).eval()
    plugin = build_model(tiny_pointrend(*FAST, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")).eval()
    plugin.load_state_dict(stock.state_dict())
    inputs = [{"image": batch[0]["image"]}]
    with torch.no_grad():
        want = stock.inference(inputs, do_postprocess=False)[0]
        got = plugin.inference(inputs, do_postprocess=False)[0]
    assert len(want) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, want.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.pred_masks, want.pred_masks, rtol=1e-3, atol=1e-3)


def test_train_net_trains_a_pointrend_config(tmp_path: Path):
    """``tools/train_net.py`` with a PointRend YAML (Detectron2's own tool refuses it without the project's
    config function), shrunk to the tiny model by a child config."""
    own = yaml.safe_load(TINY_CONFIG.read_text())
    own.pop("_BASE_")
    own["MODEL"]["ROI_MASK_HEAD"]["FC_DIM"] = 64
    config = tmp_path / "pointrend_tiny.yaml"
    config.write_text(yaml.safe_dump({"_BASE_": str(POINTREND), **own}))
    args = Namespace(
        config_file=str(config),
        opts=["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "2"],
        eval_only=False,
        resume=False,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
    )
    load_script("tools/train_net.py").main(args)
    assert (tmp_path / "model_final.pth").is_file()
