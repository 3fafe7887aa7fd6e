"""Every config in configs/ builds a model that runs one training step and one inference on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from d2_maskext.config import add_maskext_config
from d2_maskext.data.mappers import build_mapper

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if not p.name.startswith("Base-"))
TINY_OVERRIDES = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "INPUT.MASK_FORMAT", "bitmask",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "TEST.DETECTIONS_PER_IMAGE", "10",
]


def tiny_cfg(path: Path):
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(TINY_OVERRIDES)
    return cfg


def test_configs_found():
    names = {p.name for p in CONFIGS}
    assert "mask_rcnn_R18_FPN_GN_demo.yaml" in names and "mask_rcnn_R_50_FPN_1x.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_config_trains_one_step_and_infers(path: Path):
    cfg = tiny_cfg(path)
    torch.manual_seed(0)
    model = build_model(cfg)
    mapper = build_mapper(cfg, is_train=True)
    records = DatasetCatalog.get("maskext_synth_tiny_train")[:2]
    batch = [mapper(dict(r)) for r in records]
    model.train()
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    torch.optim.SGD(model.parameters(), lr=1e-3).step()

    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 128, "width": 128}])
    inst: Instances = out[0]["instances"]
    assert inst.image_size == (128, 128)
    if len(inst):
        assert inst.pred_masks.shape[1:] == (128, 128)
        assert bool(((inst.scores >= 0) & (inst.scores <= 1)).all())
