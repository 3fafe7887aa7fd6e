"""Detectron2's tools, plugin-aware: visualize_data.py, analyze_model.py and benchmark.py take YAML and lazy
configs with Detectron2's flags; analyze_model.py counts the fused pooler's RoIAlign; demo.py
follows an OUTPUT_DIR override."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch
from detectron2.structures import Boxes
from helpers.lazy_tiny import TINY_DEMO_OVERRIDES, TINY_LAZY_CONFIG
from helpers.train_net_runner import REPO, TINY_CONFIG, load_script
from torch import nn

from d2_maskext.cli.model_analysis import FlopCountAnalysis
from d2_maskext.layers import FusedROIPooler

VAL = "maskext_synth_tiny_val"
YAML_OPTS = ("DATASETS.TEST", f'("{VAL}",)', "MODEL.MASKEXT.POOLER", "fused")
LAZY_OPTS = (
    *TINY_DEMO_OVERRIDES,
    "dataloader.train.mapper.augmentations.0.short_edge_length=[128]",
    "dataloader.train.mapper.augmentations.0.max_size=128",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
)
CONFIGS = {"yaml": (TINY_CONFIG, YAML_OPTS), "lazy": (TINY_LAZY_CONFIG, LAZY_OPTS)}


class _Pooler(nn.Module):
    """The fused pooler on one feature map, with plain tensors in and out (for tracing)."""

    def __init__(self, sampling_ratio: int) -> None:
        super().__init__()
        self.pooler = FusedROIPooler(7, [0.25], sampling_ratio, "ROIAlignV2")

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.pooler([features], [Boxes(boxes)])


@pytest.mark.parametrize(("sampling_ratio", "samples_per_bin"), [(2, 4), (3, 9), (0, 4)])
def test_roi_align_flops_count_four_taps_per_sample_point(sampling_ratio: int, samples_per_bin: int):
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [4.0, 8.0, 30.0, 40.0], [1.0, 1.0, 9.0, 9.0]])
    analysis = FlopCountAnalysis(_Pooler(sampling_ratio), (torch.rand(1, 16, 32, 32), boxes))
    assert analysis.by_operator()["roi_align"] == 3 * 16 * 7 * 7 * samples_per_bin * 4
    assert "d2_maskext::roi_align" not in analysis.unsupported_ops()


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_analyze_model_counts_the_fused_pooler(kind: str):
    config, opts = CONFIGS[kind]
    results = load_script("tools/analyze_model.py").main(
        ["--config-file", str(config), "--tasks", "flop", "activation", "parameter", "structure", "-n", "1", *opts]
    )
    assert results["flop"]["roi_align"] > 0 and results["flop"]["conv"] > results["flop"]["roi_align"]
    assert results["activation"]["conv"] > 0
    assert "roi_heads.mask_head" in results["parameter"]
    assert "FusedROIPooler" in results["structure"]


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("task", ["train", "eval", "data"])
def test_benchmark_times_each_task(kind: str, task: str, capsys):
    config, opts = CONFIGS[kind]
    argv = ["--config-file", str(config), "--task", task, "--max-iter", "2", "--warmup", "1", "--num-batches", "1"]
    seconds = load_script("tools/benchmark.py").main([*argv, *opts])
    assert seconds > 0
    assert f"{task}: " in capsys.readouterr().out


def test_visualize_annotations_of_a_yaml_config(tmp_path, capsys):
    count = load_script("tools/visualize_data.py").main(
        ["--source", "annotation", "--config-file", str(TINY_CONFIG), "--output-dir", str(tmp_path), "--num-images", "3"]
    )
    assert count == 3 and len(list(tmp_path.glob("*.jpg"))) == 3
    assert f"3 images from the annotation of {TINY_CONFIG}" in capsys.readouterr().out


def test_visualize_what_lsj_and_copy_paste_feed_the_model(tmp_path):
    """The copy-paste lazy config at 96x96: every image the model gets is the fixed LSJ size."""
    config = REPO / "configs" / "lazy" / "synthetic" / "mapper_copy_paste.py"
    lsj = "dataloader.train.mapper.augmentations"
    opts = [*TINY_DEMO_OVERRIDES, f"{lsj}.1.target_height=96", f"{lsj}.1.target_width=96", f"{lsj}.2.crop_size=[96,96]"]
    count = load_script("tools/visualize_data.py").main(
        ["--source", "dataloader", "--config-file", str(config), "--output-dir", str(tmp_path), "--num-images", "4", *opts]
    )
    images = sorted(tmp_path.glob("*.jpg"))
    assert count == 4 and len(images) == 4
    assert {cv2.imread(str(p)).shape for p in images} == {(96, 96, 3)}


def test_tools_name_a_config_they_cannot_read(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="config.json: a config is a YAML file"):
        load_script("tools/benchmark.py").main(["--config-file", str(bad), "--task", "data"])
    with pytest.raises(FileNotFoundError, match="no such config file"):
        load_script("tools/analyze_model.py").main(["--config-file", str(Path(tmp_path, "missing.yaml")), "--tasks", "structure"])


def test_eval_report_of_a_model_reads_no_training_data(tmp_path, capsys, tiny_random_weights: Path):
    weights = tiny_random_weights
    missing = tmp_path / "missing"
    declared = f"[{{'name': 'absent_train', 'format': 'coco', 'image_root': '{missing}', 'annotations': '{missing}.json'}}]"
    out = tmp_path / "report"

    load_script("tools/eval_report.py").main(
        ["--config-file", str(TINY_CONFIG), "--output-dir", str(out), "MODEL.WEIGHTS", str(weights),
         "DATASETS.REGISTER", declared, "DATASETS.TRAIN", '("absent_train",)', "DATASETS.TEST", f'("{VAL}",)']
    )  # fmt: skip

    assert f"report: {out / 'report.html'}" in capsys.readouterr().out


def test_demo_reads_its_results_where_an_output_dir_override_sends_them():
    demo = load_script("tools/demo.py")
    assert demo.output_dir(["SOLVER.MAX_ITER", "100"]) == REPO / "output" / "demo"
    assert demo.output_dir(["OUTPUT_DIR", "output/a", "SEED", "2", "OUTPUT_DIR", "output/b"]) == REPO / "output" / "b"
    assert demo.output_dir(["OUTPUT_DIR", "/tmp/demo"]) == Path("/tmp/demo")
