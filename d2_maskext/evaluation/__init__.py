"""Evaluators shared by ``train_net.py --eval-only`` and the evaluation report."""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """COCO box and mask AP on ``dataset_name``."""
    return COCOEvaluator(dataset_name, output_dir=output_folder, tasks=("bbox", "segm"), max_dets_per_image=100)
