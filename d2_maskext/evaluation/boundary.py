"""Boundary AP: COCO's mask AP with Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric
Image Segmentation Evaluation", CVPR 2021) as the matching criterion.

Mask IoU of a large object hardly changes when its outline is a few pixels off; Boundary IoU compares only
the band of each mask within ``d`` pixels of its contour, so it does. A detection's IoU with a ground-truth
instance is ``min(mask IoU, boundary IoU)``; crowd regions keep COCO's crowd mask IoU (intersection over
the detection's area), since their outlines mean nothing. ``BoundaryCOCOeval`` only replaces
``computeIoU``: matching, accumulation and the summary are pycocotools' own, so the numbers read like mask AP.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.evaluation.coco_evaluation import COCOevalMaxDets
from pycocotools.coco import COCO

from .coco_metrics import TaskEvaluation, empty_results

DILATION_RATIO = 0.02
BOUNDARY_TASK = "boundary"
_CV_MAX_CHANNELS = 512  # cv2 morphology handles at most this many channels per call
_KERNEL = np.ones((3, 3), np.uint8)


def boundary_width(height: int, width: int, dilation_ratio: float = DILATION_RATIO) -> int:
    """Boundary band width in pixels: ``round(ratio * image diagonal)``, at least 1."""
    return max(1, round(dilation_ratio * float(np.hypot(height, width))))


def mask_boundaries(masks: np.ndarray, band: int) -> np.ndarray:
    """Inner boundary bands of ``masks`` (``(H, W, N)``, any integer type): each mask minus its erosion by a
    3x3 square ``band`` times. Pixels outside the image count as background, so a mask touching the image
    edge has a boundary along it, as in the reference implementation."""
    masks = np.ascontiguousarray(masks, dtype=np.uint8)
    eroded = np.empty_like(masks)
    for start in range(0, masks.shape[2], _CV_MAX_CHANNELS):
        chunk = masks[:, :, start : start + _CV_MAX_CHANNELS]
        out = cv2.erode(chunk, _KERNEL, iterations=band, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        eroded[:, :, start : start + _CV_MAX_CHANNELS] = out.reshape(chunk.shape)
    return masks & (1 - eroded)


def _boundary_rles(rles: list[dict], band: int) -> list[dict]:
    if not rles:
        return []
    return mask_util.encode(np.asfortranarray(mask_boundaries(mask_util.decode(rles), band)))


def boundary_iou_matrix(dt_rles: list[dict], gt_rles: list[dict], gt_iscrowd: Sequence[int], band: int) -> np.ndarray:
    """``[D, G]`` IoU used for matching: min(mask IoU, boundary IoU); crowd columns: COCO's crowd mask IoU."""
    if not dt_rles or not gt_rles:
        return np.zeros((len(dt_rles), len(gt_rles)))
    crowd = np.asarray(gt_iscrowd, dtype=np.uint8)
    mask_iou = np.asarray(mask_util.iou(dt_rles, gt_rles, crowd))
    boundary_iou = np.asarray(
        mask_util.iou(_boundary_rles(dt_rles, band), _boundary_rles(gt_rles, band), np.zeros_like(crowd))
    )
    return np.where(crowd[None, :].astype(bool), mask_iou, np.minimum(mask_iou, boundary_iou))


class BoundaryCOCOeval(COCOevalMaxDets):
    """pycocotools' COCOeval (``iouType="segm"``) whose IoU is :func:`boundary_iou_matrix`.

    Detectron2's ``COCOevalMaxDets`` is the base so that ``summarize`` honours a custom largest maxDets.
    """

    def __init__(self, coco_gt: COCO, coco_dt: COCO, dilation_ratio: float = DILATION_RATIO) -> None:
        super().__init__(coco_gt, coco_dt, "segm")
        self.dilation_ratio = dilation_ratio

    def computeIoU(self, imgId: int, catId: int):  # noqa: N802 (pycocotools' name)
        p = self.params
        if p.useCats:
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if not gt and not dt:
            return []
        # Same detection order and truncation as COCOeval.computeIoU, which evaluateImg relies on.
        dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")][: p.maxDets[-1]]
        image = self.cocoGt.imgs[imgId]
        band = boundary_width(image["height"], image["width"], self.dilation_ratio)
        return boundary_iou_matrix(
            [d["segmentation"] for d in dt], [g["segmentation"] for g in gt], [int(g["iscrowd"]) for g in gt], band
        )


@dataclass(frozen=True)
class ImageBoundaryQuality:
    """How well one image's ground-truth outlines are found: per instance, the best IoU of
    :func:`boundary_iou_matrix` with a same-class prediction at or above the score threshold (0 if none)."""

    image_id: int
    gt_ids: tuple[int, ...]
    best_iou: tuple[float, ...]

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.best_iou)) if self.best_iou else 1.0


def image_boundary_quality(coco_eval: BoundaryCOCOeval, score_threshold: float) -> dict[int, ImageBoundaryQuality]:
    """Per-image quality from an evaluated :class:`BoundaryCOCOeval` (crowd ground truth left out)."""
    if not coco_eval.ious:
        raise ValueError("BoundaryCOCOeval.evaluate() has not been run (no IoUs)")
    p = coco_eval.params
    found: dict[int, tuple[list[int], list[float]]] = {img_id: ([], []) for img_id in p.imgIds}
    for (img_id, cat_id), ious in coco_eval.ious.items():
        gt = coco_eval._gts[img_id, cat_id]
        dt = coco_eval._dts[img_id, cat_id]
        scores = np.sort([d["score"] for d in dt])[::-1][: p.maxDets[-1]]
        kept = np.asarray(ious)[scores >= score_threshold] if len(dt) else np.zeros((0, len(gt)))
        best = kept.max(axis=0) if kept.shape[0] else np.zeros(len(gt))
        ids, values = found[img_id]
        for g, value in zip(gt, best):
            if not g["iscrowd"]:
                ids.append(int(g["id"]))
                values.append(float(value))
    return {img_id: ImageBoundaryQuality(img_id, tuple(ids), tuple(v)) for img_id, (ids, v) in found.items()}


def evaluate_boundary_results(
    coco_gt: COCO,
    results: Sequence[dict],
    max_dets_per_image: int = 100,
    img_ids: Sequence[int] | None = None,
    dilation_ratio: float = DILATION_RATIO,
) -> TaskEvaluation:
    """Boundary AP of COCO mask results (``results`` is not modified); results without masks are ignored.

    Mask areas decide small/medium/large, as for mask AP. With no mask results every class with ground
    truth gets AP 0.
    """
    masks = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_dt = coco_gt.loadRes(copy.deepcopy(masks)) if masks else empty_results(coco_gt)
        coco_eval = BoundaryCOCOeval(coco_gt, coco_dt, dilation_ratio)
        coco_eval.params.maxDets = [1, 10, max_dets_per_image]
        if img_ids is not None:
            coco_eval.params.imgIds = list(img_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    lines = [line for line in summary.getvalue().splitlines() if "Average Precision" in line or "Average Recall" in line]
    return TaskEvaluation(BOUNDARY_TASK, coco_eval, "\n".join(lines))



def worst_boundary_images(quality: dict[int, ImageBoundaryQuality], count: int) -> list[ImageBoundaryQuality]:
    """Up to ``count`` images with ground truth whose outlines are not all found exactly, lowest mean first."""
    imperfect = [q for q in quality.values() if q.best_iou and q.mean_iou < 1.0]
    return sorted(imperfect, key=lambda q: (q.mean_iou, q.image_id))[:count]
