"""Every LazyConfig file loads, builds, trains a step and infers; lazy and YAML twins build the same model;
``tools/lazyconfig_train_net.py`` trains and evaluates with Detectron2's command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from helpers.lazy_tiny import LAZY_CONFIGS, REPO, TINY_DEMO_OVERRIDES, TINY_LAZY_CONFIG, load_tiny_lazy
from helpers.train_net_runner import tail

import d2_maskext  # noqa: F401  (registers the plugin components and the synthetic datasets)
from d2_maskext.config import add_maskext_config
from d2_maskext.engine.lazy_training import build_lazy_model, lazy_checkpointer, lazy_evaluate, lazy_train

CONFIGS = REPO / "configs"

# Each lazy config and the YAML config of the same model (the COCO variants switched to the fused pooler).
TWINS = {
    "mask_rcnn_R_50_FPN_1x.py": ("coco/mask_rcnn_R_50_FPN_1x_fused_pooler.yaml", ()),
    "mask_rcnn_R_50_FPN_1x_cpu_fast.py": ("coco/mask_rcnn_R_50_FPN_1x_cpu_fast.yaml", ()),
    **{
        f"variants/{name}.py": (f"coco/variants/{name}.yaml", ("MODEL.MASKEXT.POOLER", "fused"))
        for name in (
            "mask_scoring",
            "boundary_mask_head",
            "hires_mask_head",
            "light_mask_head",
            "double_head",
            "mask_loss_dice_boundary",
        )
    },
    "synthetic/mask_rcnn_R18_FPN_GN_demo.py": ("synthetic/mask_rcnn_R18_FPN_GN_demo.yaml", ()),
    **{
        f"finetune/{name}.py": (f"finetune/{name}.yaml", ())
        for name in ("mask_rcnn_R_50_FPN", "boundary_mask_head", "mask_scoring")
    },
}


def _config_id(path: Path) -> str:
    return path.relative_to(CONFIGS / "lazy").as_posix()


@pytest.mark.slow
@pytest.mark.parametrize("config", LAZY_CONFIGS, ids=_config_id)
def test_lazy_config_trains_a_step_and_infers(tmp_path, config: Path):
    cfg = load_tiny_lazy(config, tmp_path)
    cfg.dataloader.train.total_batch_size = 1
    del cfg.dataloader.evaluator  # inference on one image below, instead of the whole val split
    lazy_train(cfg, resume=False)
    checkpoint = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert checkpoint["trainer"]["hooks"]["OptimizerStepCounter"] == {"steps": 1}

    model = build_lazy_model(cfg).eval()
    lazy_checkpointer(cfg, model).load(str(tmp_path / "model_final.pth"))
    batch = next(iter(instantiate(cfg.dataloader.test)))
    with torch.no_grad():
        (output,) = model(batch)
    instances = output["instances"]
    assert instances.image_size == (batch[0]["height"], batch[0]["width"])
    assert instances.has("pred_masks") and all(0 <= c < 5 for c in instances.pred_classes.tolist())


def _module_tree(model: torch.nn.Module) -> dict:
    """Module types by name, and parameter/buffer shapes by name."""
    return {
        "modules": {name: type(m).__name__ for name, m in model.named_modules()},
        "tensors": {name: tuple(t.shape) for name, t in model.state_dict().items()},
    }


@pytest.mark.parametrize("lazy_name", sorted(TWINS))
def test_lazy_and_yaml_twins_build_the_same_model(lazy_name: str):
    yaml_name, opts = TWINS[lazy_name]
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(CONFIGS / yaml_name))
    cfg.merge_from_list(["MODEL.DEVICE", "meta", *opts])
    lazy = LazyConfig.load(str(CONFIGS / "lazy" / lazy_name))
    with torch.device("meta"):  # no memory, no initialisation cost: only the structure is compared
        yaml_model = build_model(cfg)
        lazy_model = instantiate(lazy.model)
    assert _module_tree(lazy_model) == _module_tree(yaml_model)


@pytest.mark.slow
def test_lazyconfig_train_net_trains_two_iterations_and_evaluates(tmp_path):
    log = tmp_path / "log.txt"
    command = [
        sys.executable,
        str(REPO / "tools" / "lazyconfig_train_net.py"),
        "--config-file",
        str(TINY_LAZY_CONFIG),
        *TINY_DEMO_OVERRIDES,
        f"train.output_dir={tmp_path / 'out'}",
    ]
    with log.open("w") as f:
        proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, tail(log)
    text = log.read_text()
    assert "Optimizer steps over the whole run: 2" in text, tail(log)
    assert "copypaste: Task: segm" in text, tail(log)
    out = tmp_path / "out"
    assert (out / "model_final.pth").is_file()
    assert (out / "report" / "report.html").is_file()


@pytest.mark.slow
def test_eval_only_loads_the_checkpoint_evaluates_and_writes_the_report(tmp_path):
    cfg = load_tiny_lazy(TINY_LAZY_CONFIG, tmp_path)
    torch.manual_seed(0)
    lazy_checkpointer(cfg, build_lazy_model(cfg)).save("random_init")
    cfg.train.init_checkpoint = str(tmp_path / "random_init.pth")
    cfg.train.report.enabled = True

    results = lazy_evaluate(cfg, resume=False)

    assert {"bbox", "segm", "boundary"} <= set(results)
    assert (tmp_path / "report" / "report.html").is_file()
