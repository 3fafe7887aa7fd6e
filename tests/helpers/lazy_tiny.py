"""The lazy configs shrunk to the tests' tiny model (as ``shrink_to_tiny`` does for YAML configs): ResNet-18
with GroupNorm, 32-channel FPN, narrow heads, the 128-pixel tiny synthetic splits, CPU, no weights file."""

from __future__ import annotations

from pathlib import Path

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import ResNet
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[2]
LAZY_CONFIGS = sorted(p for p in (REPO / "configs" / "lazy").rglob("*.py") if "common" not in p.parts)
TINY_LAZY_CONFIG = REPO / "configs" / "lazy" / "synthetic" / "mask_rcnn_R18_FPN_GN_demo.py"
WIDTH = 32
SIZE = 128

# Overrides of the demo for a run on the tiny split, as command-line ``key=value`` items.
TINY_DEMO_OVERRIDES = (
    "dataloader.train.dataset.names=maskext_synth_tiny_train",
    "dataloader.test.dataset.names=maskext_synth_tiny_val",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "train.max_iter=2",
)


def _shrink_model(model: DictConfig) -> None:
    bottom_up = model.backbone.bottom_up
    bottom_up.stem.norm = "GN"
    bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="GN")
    bottom_up.freeze_at = 0
    model.backbone.norm = "GN"
    model.backbone.out_channels = WIDTH
    model.proposal_generator.head.in_channels = WIDTH
    model.proposal_generator.post_nms_topk = (64, 32)
    heads = model.roi_heads
    heads.num_classes = 5
    heads.batch_size_per_image = 32
    heads.box_head.input_shape = ShapeSpec(channels=WIDTH, height=7, width=7)
    heads.box_head.fc_dims = [64, 64]
    if "reg_conv_dim" in heads.box_head:
        heads.box_head.reg_conv_dim = 128
        heads.box_head.reg_num_blocks = 1
    heads.box_predictor.input_shape = ShapeSpec(channels=64)
    heads.box_predictor.test_topk_per_image = 10
    mask = heads.mask_head
    mask.input_shape = ShapeSpec(channels=WIDTH, height=14, width=14)
    if "conv_dims" in mask:
        mask.conv_dims = [WIDTH] * 3
    if "conv_dim" in mask:
        mask.conv_dim, mask.num_conv = WIDTH, 2
    if "fine_channels" in mask:
        mask.fine_channels = WIDTH
    if "maskiou_head" in heads:
        heads.maskiou_head.input_shape = ShapeSpec(channels=WIDTH, height=14, width=14)
        heads.maskiou_head.conv_dims, heads.maskiou_head.fc_dims = [WIDTH, WIDTH], [64]


def _shrink_augmentations(augmentations) -> None:
    for aug in augmentations:
        target = aug._target_  # the class itself, or its dotted name where a config was saved and reloaded
        target = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
        if target.endswith("ResizeShortestEdge"):
            aug.short_edge_length = (SIZE,) if isinstance(aug.short_edge_length, (list, tuple)) else SIZE
            aug.max_size = SIZE
        elif target.endswith("ResizeScale"):
            aug.target_height = aug.target_width = SIZE
        elif target.endswith("FixedSizeCrop"):
            aug.crop_size = (SIZE, SIZE)


def shrink_lazy_to_tiny(cfg: DictConfig, output_dir: Path) -> DictConfig:
    """``cfg`` (a loaded lazy config) made tiny, writing to ``output_dir``; one training step, no report."""
    _shrink_model(cfg.model)
    train, test = cfg.dataloader.train, cfg.dataloader.test
    train.dataset.names, test.dataset.names = "maskext_synth_tiny_train", "maskext_synth_tiny_val"
    train.total_batch_size, train.num_workers, test.num_workers = 2, 0, 0
    train.mapper.instance_mask_format = "bitmask"  # the synthetic masks are RLE
    _shrink_augmentations(train.mapper.augmentations)
    _shrink_augmentations(test.mapper.augmentations)
    cfg.train.update(device="cpu", max_iter=1, init_checkpoint="", output_dir=str(output_dir), eval_period=0)
    cfg.train.report.enabled = False
    return cfg


def load_tiny_lazy(config: Path, output_dir: Path) -> DictConfig:
    return shrink_lazy_to_tiny(LazyConfig.load(str(config)), output_dir)
