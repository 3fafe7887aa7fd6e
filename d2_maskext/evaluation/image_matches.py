"""COCOeval's own per-image matches at one IoU threshold, for the score sweep and the worst images.

``COCOeval.evaluate`` matches predictions to ground truth per image and class (greedy by score, area
range "all", at most maxDets predictions). Reading those matches back, instead of matching again, keeps
the sweep and the per-image counts consistent with the AP numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools.cocoeval import COCOeval


@dataclass
class ImageMatches:
    """Matches in one image; ignored predictions (matched to crowd regions) are kept apart."""

    image_id: int
    dt_ids: list[int] = field(default_factory=list)
    dt_scores: list[float] = field(default_factory=list)
    dt_is_match: list[bool] = field(default_factory=list)
    gt_ids: list[int] = field(default_factory=list)
    # Score of the prediction matched to each ground truth, -inf when none matched it.
    gt_match_scores: list[float] = field(default_factory=list)
    ignored_dt_ids: list[int] = field(default_factory=list)

    def counts(self, score_threshold: float) -> tuple[int, int, int]:
        """(true positives, false positives, missed ground truth) among predictions >= ``score_threshold``."""
        scores = np.asarray(self.dt_scores, dtype=float)
        kept = scores >= score_threshold
        tp = int(np.count_nonzero(kept & np.asarray(self.dt_is_match, dtype=bool)))
        fp = int(np.count_nonzero(kept)) - tp
        return tp, fp, len(self.gt_ids) - tp

    def f1(self, score_threshold: float) -> float:
        """F1 of this image; 1.0 for an image without ground truth and without predictions."""
        tp, fp, fn = self.counts(score_threshold)
        return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def iou_index(coco_eval: COCOeval, iou_threshold: float) -> int:
    """Index of ``iou_threshold`` in ``params.iouThrs``; only thresholds COCOeval evaluated are valid."""
    hits = np.flatnonzero(np.isclose(coco_eval.params.iouThrs, iou_threshold))
    if not hits.size:
        raise ValueError(
            f"IoU threshold {iou_threshold} is not one of COCOeval's {coco_eval.params.iouThrs.tolist()}"
        )
    return int(hits[0])


def collect_image_matches(coco_eval: COCOeval, iou_threshold: float) -> dict[int, ImageMatches]:
    """Per-image matches of an evaluated ``COCOeval`` at ``iou_threshold`` (all classes pooled)."""
    if not coco_eval.evalImgs:
        raise ValueError("COCOeval.evaluate() has not been run (evalImgs is empty)")
    p = coco_eval.params
    t = iou_index(coco_eval, iou_threshold)
    area_all = p.areaRngLbl.index("all")
    num_images, num_areas = len(p.imgIds), len(p.areaRng)
    by_image = {img_id: ImageMatches(img_id) for img_id in p.imgIds}
    for k in range(len(p.catIds)):
        for i, img_id in enumerate(p.imgIds):
            e = coco_eval.evalImgs[k * num_areas * num_images + area_all * num_images + i]
            if e is None:
                continue
            matches = by_image[img_id]
            score_of = dict(zip(e["dtIds"], e["dtScores"]))
            for dt_id, score, matched, ignored in zip(
                e["dtIds"], e["dtScores"], e["dtMatches"][t], e["dtIgnore"][t]
            ):
                if ignored:
                    matches.ignored_dt_ids.append(int(dt_id))
                    continue
                matches.dt_ids.append(int(dt_id))
                matches.dt_scores.append(float(score))
                matches.dt_is_match.append(bool(matched > 0))
            for gt_id, matched_dt, ignored in zip(e["gtIds"], e["gtMatches"][t], e["gtIgnore"]):
                if not ignored:
                    matches.gt_ids.append(int(gt_id))
                    matches.gt_match_scores.append(
                        float(score_of[int(matched_dt)]) if matched_dt > 0 else -np.inf
                    )
    return by_image


@dataclass(frozen=True)
class ScoreSweep:
    """Precision, recall and F1 over all classes when keeping predictions with score >= threshold."""

    thresholds: np.ndarray
    precision: np.ndarray  # NaN where no prediction is kept
    recall: np.ndarray
    f1: np.ndarray

    def best(self) -> tuple[float, float, float, float]:
        """(threshold, precision, recall, F1) at the highest F1 (lowest threshold on ties)."""
        i = int(np.nanargmax(np.nan_to_num(self.f1, nan=-1.0)))
        return float(self.thresholds[i]), float(self.precision[i]), float(self.recall[i]), float(self.f1[i])

    def at(self, threshold: float) -> tuple[float, float, float]:
        """(precision, recall, F1) at the grid threshold closest to ``threshold``."""
        i = int(np.argmin(np.abs(self.thresholds - threshold)))
        return float(self.precision[i]), float(self.recall[i]), float(self.f1[i])


def score_sweep(matches: dict[int, ImageMatches], thresholds: np.ndarray | None = None) -> ScoreSweep:
    """Sweep the score threshold over ``thresholds`` (default 0.00, 0.01, ..., 1.00)."""
    thresholds = np.linspace(0.0, 1.0, 101) if thresholds is None else np.asarray(thresholds, dtype=float)
    scores = np.array([s for m in matches.values() for s in m.dt_scores], dtype=float)
    is_match = np.array([x for m in matches.values() for x in m.dt_is_match], dtype=bool)
    num_gt = sum(len(m.gt_ids) for m in matches.values())
    kept = scores[None, :] >= thresholds[:, None]
    tp = (kept & is_match[None, :]).sum(axis=1).astype(float)
    num_kept = kept.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(num_kept > 0, tp / num_kept, np.nan)
        recall = tp / num_gt if num_gt else np.full_like(tp, np.nan)
        f1 = np.where(num_kept + num_gt > 0, 2 * tp / (num_kept + num_gt), np.nan)
    return ScoreSweep(thresholds, precision, recall, f1)


def worst_images(matches: dict[int, ImageMatches], score_threshold: float, count: int) -> list[ImageMatches]:
    """Up to ``count`` images with errors, lowest F1 first, then most errors, then image id."""

    def rank(m: ImageMatches) -> tuple[float, int, int]:
        _, fp, fn = m.counts(score_threshold)
        return m.f1(score_threshold), -(fp + fn), m.image_id

    with_errors = [m for m in matches.values() if sum(m.counts(score_threshold)[1:])]
    return sorted(with_errors, key=rank)[:count]
