"""Every config in configs/ builds a model that runs one inference and one training step on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from helpers.train_net_runner import shrink_to_tiny

from d2_maskext.cli.config_loading import read_yaml_config
from d2_maskext.config import add_maskext_config
from d2_maskext.data.mappers import build_mapper

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
# configs/examples/ train on datasets on disk with their own input (e.g. single-channel RAW images), which the
# synthetic batches here cannot stand in for; tests/test_label_maps.py runs them on generated datasets.
CONFIGS = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if not p.name.startswith("Base-") and "examples" not in p.parts)


def tiny_cfg(path: Path):
    """``path`` shrunk to the tiny test model, with the five classes of the synthetic batches (fine-tuning
    configs name their own); every detection is kept, so inference always returns some."""
    cfg = read_yaml_config(path)  # as the tools read it: Detectron2 project keys (PointRend) included
    shrink_to_tiny(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    return cfg


def test_configs_found():
    names = {p.name for p in CONFIGS}
    assert "mask_rcnn_R18_FPN_GN_demo.yaml" in names and "mask_rcnn_R_50_FPN_1x.yaml" in names


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_config_infers_and_trains_one_step(path: Path):
    """Inference runs on the freshly initialised model: one SGD step on random ResNet-50 weights can push
    every foreground score below float32's smallest value, which would leave nothing to check."""
    cfg = tiny_cfg(path)
    torch.manual_seed(0)
    model = build_model(cfg)
    mapper = build_mapper(cfg, is_train=True)
    records = DatasetCatalog.get("maskext_synth_tiny_train")[:2]
    batch = [mapper(dict(r)) for r in records]

    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 128, "width": 128}])
    inst: Instances = out[0]["instances"]
    assert inst.image_size == (128, 128)
    assert 0 < len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert inst.pred_masks.shape[1:] == (128, 128)
    assert bool(((inst.scores >= 0) & (inst.scores <= 1)).all())

    model.train()
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


VARIANT_CONFIGS = sorted(CONFIG_ROOT.glob("*/variants/*.yaml"))


def _roi_heads_components(cfg) -> dict[str, str]:
    """Class of each ROI-heads component (poolers, heads, predictor) that ``cfg`` builds."""
    shapes = {f"p{k}": ShapeSpec(channels=cfg.MODEL.FPN.OUT_CHANNELS, stride=2**k) for k in range(2, 6)}
    return {name: type(m).__name__ for name, m in build_roi_heads(cfg, shapes).named_children()}


@pytest.mark.parametrize("path", VARIANT_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_variant_config_selects_its_head_with_one_name_line(path: Path):
    """A variant config sets one ``NAME`` over its base; its other keys are options, not requirements, except
    the empty ``POOLER_TYPE`` by which Detectron2 marks a mask head that pools its own features."""
    own = yaml.safe_load(path.read_text())
    name_keys = [
        (section, keys["NAME"]) for section, keys in own["MODEL"].items() if isinstance(keys, dict) and "NAME" in keys
    ]
    assert len(name_keys) == 1, name_keys
    (section, name), = name_keys
    one_line = add_maskext_config(get_cfg())
    one_line.merge_from_file(str(path.parent / own["_BASE_"]))
    one_line.merge_from_list([f"MODEL.{section}.NAME", name])
    if own["MODEL"][section].get("POOLER_TYPE") == "":
        one_line.merge_from_list([f"MODEL.{section}.POOLER_TYPE", ""])
    variant = add_maskext_config(get_cfg())
    variant.merge_from_file(str(path))
    assert _roi_heads_components(one_line) == _roi_heads_components(variant)
