"""Everything the report shows, computed once: COCOeval per task (Boundary AP with masks), per-image matches,
the score sweep and the confusion matrix; and ``metrics.json`` from it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from pycocotools.coco import COCO

from ..boundary import BOUNDARY_TASK, ImageBoundaryQuality, evaluate_boundary_results, image_boundary_quality
from ..coco_metrics import TASK_TITLES, TaskEvaluation, evaluate_coco_results
from ..confusion import ConfusionMatrix, compute_confusion_matrix
from ..image_matches import ImageMatches, ScoreSweep, collect_image_matches, score_sweep
from .html_blocks import fmt
from .options import ReportOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportAnalysis:
    """The evaluations of every task and what the report's analysis sections read, for ``analysis_task``
    (mask when predictions have masks, else box)."""

    evaluations: dict[str, TaskEvaluation]
    sweeps: dict[str, ScoreSweep]
    analysis_task: str
    matches: dict[int, ImageMatches]
    confusion: ConfusionMatrix
    # Boundary IoU per image and the Boundary-AP matches; empty without masks.
    boundary_quality: dict[int, ImageBoundaryQuality] = field(default_factory=dict)
    boundary_matches: dict[int, ImageMatches] = field(default_factory=dict)


def analyse(
    coco_gt: COCO, results: Sequence[dict], options: ReportOptions, tasks: Sequence[str]
) -> ReportAnalysis:
    """COCOeval of each task in ``tasks`` (and Boundary AP when masks are evaluated), then per-image matches,
    score sweeps and the confusion matrix of the analysis task."""
    evaluations = {
        task: evaluate_coco_results(coco_gt, results, task, options.max_dets_per_image) for task in tasks
    }
    if "segm" in evaluations:
        evaluations[BOUNDARY_TASK] = evaluate_boundary_results(coco_gt, results, options.max_dets_per_image)
    for task, evaluation in evaluations.items():
        metrics = ", ".join(f"{k} {fmt(v)}" for k, v in evaluation.summary_metrics().items())
        logger.info("%s: %s", TASK_TITLES[task], metrics)
    matches = {
        task: collect_image_matches(e.coco_eval, options.iou_threshold) for task, e in evaluations.items()
    }
    analysis_task = "segm" if "segm" in evaluations else "bbox"
    chosen = evaluations[analysis_task].coco_eval
    confusion = compute_confusion_matrix(
        coco_gt, chosen.cocoDt, analysis_task, options.iou_threshold, options.score_threshold
    )
    sweeps = {task: score_sweep(m) for task, m in matches.items()}
    if BOUNDARY_TASK not in evaluations:
        return ReportAnalysis(evaluations, sweeps, analysis_task, matches[analysis_task], confusion)
    quality = image_boundary_quality(evaluations[BOUNDARY_TASK].coco_eval, options.score_threshold)
    return ReportAnalysis(
        evaluations, sweeps, analysis_task, matches[analysis_task], confusion, quality, matches[BOUNDARY_TASK]
    )


def metrics_json(analysis: ReportAnalysis, options: ReportOptions) -> dict:
    """``metrics.json``: the options, each task's summary metrics, per-class AP and best-F1 point, and the
    confusion matrix."""
    out: dict = {"options": asdict(options), "analysis_task": analysis.analysis_task}
    for task, evaluation in analysis.evaluations.items():
        best_t, best_p, best_r, best_f1 = analysis.sweeps[task].best()
        out[task] = {
            **evaluation.summary_metrics(),
            "per_class_AP": dict(zip(evaluation.class_names, evaluation.per_class_ap().tolist())),
            "best_f1": {"score_threshold": best_t, "precision": best_p, "recall": best_r, "f1": best_f1},
        }
    out["confusion_matrix"] = {
        "labels": analysis.confusion.labels,
        "counts": analysis.confusion.counts.tolist(),
    }
    return _nan_to_none(out)


def _nan_to_none(value):
    """JSON has no NaN: classes without ground truth get ``null``."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return None if isinstance(value, float) and np.isnan(value) else value
