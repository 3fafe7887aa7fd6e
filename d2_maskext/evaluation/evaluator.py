"""The evaluator shared by ``train_net.py --eval-only``, training-time evaluation and the report."""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.evaluation import DatasetEvaluator

from .coco_evaluator import MaskExtCOCOEvaluator


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """COCO box (and mask and Boundary AP, when ``MODEL.MASK_ON``) AP on ``dataset_name`` with the official
    pycocotools COCOeval.

    Detectron2's faster C++ COCOeval is not used: its numbers may differ slightly and it drops the
    per-image matches the report reads.
    """
    return MaskExtCOCOEvaluator(
        dataset_name,
        tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
        output_dir=output_folder,
        max_dets_per_image=cfg.TEST.EVAL.MAX_DETS_PER_IMAGE,
        use_fast_impl=False,
    )
