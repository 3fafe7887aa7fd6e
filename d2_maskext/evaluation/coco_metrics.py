"""Official COCO metrics (pycocotools ``COCOeval``) computed the way Detectron2's ``COCOEvaluator`` does.

Every number in the evaluation report is read from a ``COCOeval`` object built here: the AP table from
``COCOeval.stats``, per-class AP and precision-recall curves from ``eval["precision"]`` (shape
``[T, R, K, A, M]``), matches from ``evalImgs``. Nothing re-implements the metric.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from detectron2.evaluation.coco_evaluation import COCOevalMaxDets
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .._compat import evaluate_predictions_on_coco

AP_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TASK_TITLES: dict[str, str] = {"bbox": "box", "segm": "mask", "boundary": "boundary"}


@dataclass(frozen=True)
class TaskEvaluation:
    """One accumulated ``COCOeval`` (``bbox`` or ``segm``) and the summary text it printed."""

    iou_type: str
    coco_eval: COCOeval
    summary_text: str

    @property
    def class_names(self) -> list[str]:
        gt = self.coco_eval.cocoGt
        return [gt.cats[cat_id]["name"] for cat_id in self.coco_eval.params.catIds]

    def summary_metrics(self) -> dict[str, float]:
        """AP, AP50, AP75, APs, APm, APl in percent from ``COCOeval.stats``; NaN where COCOeval says -1."""
        stats = self.coco_eval.stats
        return {
            name: float(stats[i] * 100) if stats[i] >= 0 else float("nan")
            for i, name in enumerate(AP_METRICS)
        }

    def per_class_ap(self) -> np.ndarray:
        """AP per class in percent (area "all", largest maxDets), NaN for classes without ground truth.

        Same reduction as Detectron2's ``COCOEvaluator._derive_coco_results``.
        """
        precision = self.coco_eval.eval["precision"][:, :, :, 0, -1]
        ap = np.full(precision.shape[2], np.nan)
        for k in range(precision.shape[2]):
            valid = precision[:, :, k][precision[:, :, k] > -1]
            if valid.size:
                ap[k] = float(valid.mean() * 100)
        return ap


def load_coco_json(path: str | Path) -> COCO:
    """Load a COCO ground-truth file quietly, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ground-truth JSON not found")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return COCO(str(path))
        except (KeyError, TypeError, ValueError, AssertionError) as e:
            raise ValueError(f"{path}: not a COCO ground-truth file ({type(e).__name__}: {e})") from e


def load_results_json(path: str | Path, coco_gt: COCO) -> list[dict]:
    """Load a COCO results JSON and check every entry against ``coco_gt`` (errors name file and index)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions JSON not found")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(results, list):
        raise ValueError(f"{path}: expected a list of COCO results, got {type(results).__name__}")
    for i, r in enumerate(results):
        missing = (
            {"image_id", "category_id", "score"} - set(r) if isinstance(r, dict) else {"(not an object)"}
        )
        if missing or not ("bbox" in r or "segmentation" in r):
            raise ValueError(f"{path}: result {i} lacks {sorted(missing) or ['bbox or segmentation']}")
        if r["image_id"] not in coco_gt.imgs:
            raise ValueError(
                f"{path}: result {i} has image_id {r['image_id']!r}, which the ground truth lacks"
            )
        if r["category_id"] not in coco_gt.cats:
            raise ValueError(
                f"{path}: result {i} has category_id {r['category_id']!r}, which the ground truth lacks"
            )
    return results


def result_tasks(results: Sequence[dict]) -> tuple[str, ...]:
    """``("bbox", "segm")`` when results carry masks, else ``("bbox",)`` (as ``COCOEvaluator`` infers them)."""
    return ("bbox", "segm") if any("segmentation" in r for r in results) else ("bbox",)


def evaluate_coco_results(
    coco_gt: COCO, results: Sequence[dict], iou_type: str, max_dets_per_image: int = 100
) -> TaskEvaluation:
    """Evaluate ``results`` with Detectron2's own ``COCOEvaluator`` routine (official ``COCOeval``).

    Mask AP therefore uses mask areas for the small/medium/large split (boxes are dropped before
    ``loadRes``). ``results`` is not modified. With no results at all, every class with ground truth
    gets AP 0 (``COCOEvaluator`` reports NaN there because ``loadRes`` rejects an empty list).
    """
    max_dets = [1, 10, max_dets_per_image]
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        if results:
            coco_eval = evaluate_predictions_on_coco(
                coco_gt,
                copy.deepcopy(list(results)),
                iou_type,
                cocoeval_fn=COCOeval,
                max_dets_per_image=max_dets,
            )
        else:
            coco_eval = (COCOeval if max_dets_per_image == 100 else COCOevalMaxDets)(
                coco_gt, empty_results(coco_gt), iou_type
            )
            coco_eval.params.maxDets = max_dets
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
    lines = [
        line
        for line in summary.getvalue().splitlines()
        if "Average Precision" in line or "Average Recall" in line
    ]
    return TaskEvaluation(iou_type, coco_eval, "\n".join(lines))


def empty_results(coco_gt: COCO) -> COCO:
    """A results COCO with the ground truth's images and categories and no detections."""
    res = COCO()
    res.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": coco_gt.dataset["categories"],
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res
