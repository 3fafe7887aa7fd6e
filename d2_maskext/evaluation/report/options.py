"""What the report analyses: score and IoU thresholds, how many worst images, COCOeval's maxDets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from detectron2.config import CfgNode

COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass(frozen=True)
class ReportOptions:
    """``cfg.TEST.REPORT`` (analysis only: AP does not depend on it) and ``cfg.TEST.EVAL`` (COCOeval's maxDets)."""

    score_threshold: float = 0.5
    iou_threshold: float = 0.5
    num_worst_images: int = 8
    max_dets_per_image: int = 100

    def __post_init__(self) -> None:
        if not any(np.isclose(self.iou_threshold, t) for t in COCO_IOU_THRESHOLDS):
            raise ValueError(
                f"IoU threshold must be one of COCOeval's {COCO_IOU_THRESHOLDS}, got {self.iou_threshold}"
            )
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score threshold must be in [0, 1], got {self.score_threshold}")
        if self.num_worst_images < 0 or self.max_dets_per_image < 1:
            raise ValueError(f"need num_worst_images >= 0 and max_dets_per_image >= 1, got {self}")

    @classmethod
    def from_cfg(cls, cfg: CfgNode) -> ReportOptions:
        return cls(
            score_threshold=cfg.TEST.REPORT.SCORE_THRESHOLD,
            iou_threshold=cfg.TEST.REPORT.IOU_THRESHOLD,
            num_worst_images=cfg.TEST.REPORT.NUM_WORST_IMAGES,
            max_dets_per_image=cfg.TEST.EVAL.MAX_DETS_PER_IMAGE,
        )
