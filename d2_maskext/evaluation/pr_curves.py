"""Precision-recall curves read from ``COCOeval.eval["precision"]`` (shape ``[T, R, K, A, M]``).

COCOeval stores interpolated precision at its 101 recall thresholds; AP is the mean of exactly these
values, so the curves drawn in the report are the ones the AP numbers integrate.
"""

from __future__ import annotations

import warnings

import numpy as np
from pycocotools.cocoeval import COCOeval

from .image_matches import iou_index


def _precision(coco_eval: COCOeval) -> np.ndarray:
    """Precision at area "all" and the largest maxDets, shape (T, R, K), with -1 (no ground truth) as NaN."""
    precision = coco_eval.eval["precision"][:, :, :, coco_eval.params.areaRngLbl.index("all"), -1].astype(
        float
    )
    precision[precision < 0] = np.nan
    return precision


def _nanmean(values: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: classes without ground truth
        return np.nanmean(values, axis=axis)


def recall_thresholds(coco_eval: COCOeval) -> np.ndarray:
    return np.asarray(coco_eval.params.recThrs, dtype=float)


def per_class_curves(coco_eval: COCOeval, iou_threshold: float) -> np.ndarray:
    """(K, R) precision of each class at one IoU threshold; rows of NaN for classes without ground truth."""
    return _precision(coco_eval)[iou_index(coco_eval, iou_threshold)].T


def mean_curve(coco_eval: COCOeval, iou_threshold: float | None = None) -> np.ndarray:
    """(R,) precision averaged over classes, at one IoU threshold or over all of them (None).

    Its mean over recall thresholds is COCOeval's AP (or AP50 / AP75) at area "all".
    """
    precision = _precision(coco_eval)
    if iou_threshold is not None:
        precision = precision[[iou_index(coco_eval, iou_threshold)]]
    return _nanmean(precision, axis=(0, 2))
