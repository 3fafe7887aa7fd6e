"""Confusion matrix between classes and background (missed and spurious instances).

COCOeval matches within one class only, so it cannot say *which* class a wrong prediction took. Here
predictions (score >= threshold, highest score first) are matched to ground truth of any class: each
takes the still unmatched ground-truth instance it overlaps most, if that IoU reaches the threshold.
Rows are ground-truth classes, columns predicted classes; the extra last row and column are background:
``counts[k, -1]`` counts class-``k`` instances no prediction found (missed), ``counts[-1, k]`` counts
class-``k`` predictions that match nothing (spurious). Predictions that only overlap crowd regions are
ignored, as COCOeval ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO

BACKGROUND = "background"


@dataclass(frozen=True)
class ConfusionMatrix:
    class_names: list[str]
    counts: (
        np.ndarray
    )  # (K + 1, K + 1) int64: [ground-truth class or background, predicted class or background]

    @property
    def labels(self) -> list[str]:
        return [*self.class_names, BACKGROUND]

    @property
    def missed(self) -> np.ndarray:
        return self.counts[:-1, -1]

    @property
    def spurious(self) -> np.ndarray:
        return self.counts[-1, :-1]

    def _between_classes(self) -> np.ndarray:
        """(K, K) counts of one class's instances taken by another class's predictions (diagonal zeroed)."""
        between = self.counts[:-1, :-1].copy()
        np.fill_diagonal(between, 0)
        return between

    def most_confused_classes(self, n: int) -> list[int]:
        """Indices of the ``n`` classes most often involved in a confusion, as ground truth or as prediction;
        ties (e.g. no confusions at all) go to the class with more missed plus spurious instances."""
        between = self._between_classes()
        confusions = between.sum(axis=0) + between.sum(axis=1)
        order = np.lexsort((-(self.missed + self.spurious), -confusions))
        return [int(k) for k in order[:n]]

    def top_confused_pairs(self, n: int) -> list[tuple[int, int, int]]:
        """Up to ``n`` ``(ground-truth class, predicted class, count)`` with a nonzero count, most frequent first."""
        between = self._between_classes()
        flat = np.argsort(-between, axis=None, kind="stable")[:n]
        pairs = [(int(r), int(c), int(between[r, c])) for r, c in zip(*np.unravel_index(flat, between.shape))]
        return [pair for pair in pairs if pair[2] > 0]

    def restricted(self, class_indices: list[int]) -> ConfusionMatrix:
        """The rows and columns of ``class_indices`` (in that order) plus background."""
        keep = [*class_indices, len(self.class_names)]
        return ConfusionMatrix([self.class_names[k] for k in class_indices], self.counts[np.ix_(keep, keep)])


def _geometry(coco: COCO, ann: dict, iou_type: str):
    return ann["bbox"] if iou_type == "bbox" else coco.annToRLE(ann)


def _ious(
    coco_dt: COCO, dts: list[dict], coco_gt: COCO, gts: list[dict], iou_type: str, crowd: bool
) -> np.ndarray:
    if not dts or not gts:
        return np.zeros((len(dts), len(gts)))
    d = [_geometry(coco_dt, a, iou_type) for a in dts]
    g = [_geometry(coco_gt, a, iou_type) for a in gts]
    return np.asarray(mask_util.iou(d, g, [int(crowd)] * len(gts)), dtype=float).reshape(len(dts), len(gts))


def compute_confusion_matrix(
    coco_gt: COCO, coco_dt: COCO, iou_type: str, iou_threshold: float = 0.5, score_threshold: float = 0.5
) -> ConfusionMatrix:
    """Count class confusions, missed and spurious instances over every image of ``coco_gt``."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    cat_ids = sorted(coco_gt.getCatIds())
    index = {cat_id: k for k, cat_id in enumerate(cat_ids)}
    background = len(cat_ids)
    counts = np.zeros((background + 1, background + 1), dtype=np.int64)
    for img_id in sorted(coco_gt.getImgIds()):
        anns = coco_gt.imgToAnns.get(img_id, [])
        gts = [a for a in anns if not a.get("iscrowd", 0)]
        crowds = [a for a in anns if a.get("iscrowd", 0)]
        dts = sorted(
            (d for d in coco_dt.imgToAnns.get(img_id, []) if d["score"] >= score_threshold),
            key=lambda d: -d["score"],
        )
        ious = _ious(coco_dt, dts, coco_gt, gts, iou_type, crowd=False)
        crowd_ious = _ious(coco_dt, dts, coco_gt, crowds, iou_type, crowd=True)
        gt_taken = np.zeros(len(gts), dtype=bool)
        for i, dt in enumerate(dts):
            candidates = np.where(gt_taken, -1.0, ious[i])
            j = int(np.argmax(candidates)) if len(gts) else -1
            if j >= 0 and candidates[j] >= iou_threshold:
                gt_taken[j] = True
                counts[index[gts[j]["category_id"]], index[dt["category_id"]]] += 1
            elif not (crowds and crowd_ious[i].max() >= iou_threshold):
                counts[background, index[dt["category_id"]]] += 1
        for gt, taken in zip(gts, gt_taken):
            if not taken:
                counts[index[gt["category_id"]], background] += 1
    return ConfusionMatrix([coco_gt.cats[c]["name"] for c in cat_ids], counts)
