"""Evaluation report: one self-contained HTML file plus the predictions and ground truth in COCO format.

Two entry points share one builder:

* ``write_report(cfg, model_or_predictions, dataset_name, output_dir)`` for a registered dataset, either
  running the model through the same test loader and evaluator as ``train_net.py --eval-only`` or
  reading a COCO results file / list;
* ``write_report_from_files(predictions_json, gt_json, output_dir)`` for any COCO pair.

Files written to ``output_dir``: ``report.html``, ``metrics.json``, ``predictions.json`` (COCO results,
RLE masks) and ``ground_truth.json`` (COCO), which FiftyOne or any COCO tool can load.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path

import cv2
import matplotlib.colors as mcolors
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import inference_on_dataset
from matplotlib.figure import Figure
from pycocotools.coco import COCO
from tqdm import tqdm

from ..data.mappers import build_mapper
from ..visualization import draw_coco_instances, read_image_or_blank, side_by_side
from . import plots
from .boundary import (
    BOUNDARY_TASK,
    ImageBoundaryQuality,
    evaluate_boundary_results,
    image_boundary_quality,
    worst_boundary_images,
)
from .coco_metrics import (
    AP_METRICS,
    TASK_TITLES,
    TaskEvaluation,
    evaluate_coco_results,
    load_coco_json,
    load_results_json,
    result_tasks,
)
from .confusion import ConfusionMatrix, compute_confusion_matrix
from .evaluator import build_evaluator
from .image_matches import ImageMatches, ScoreSweep, collect_image_matches, score_sweep, worst_images
from .pr_curves import per_class_curves
from .report_html import fmt, note, page, png_img, scrolling, section, table

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
_MATCH = (0.15, 0.65, 0.25)
_ERROR = (0.9, 0.12, 0.12)
_IGNORED = (0.55, 0.55, 0.55)
_PANEL_WIDTH = 360
COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
# Above this many classes, per-class figures show a ranked selection instead of every class (an 80-entry legend
# or matrix cannot be read); the per-class table stays complete and metrics.json keeps every number.
MANY_CLASSES = 15
RANKED_AP_CLASSES = 10  # worst and best classes in the per-class AP bars
PR_CURVE_CLASSES = 5  # worst and best classes with precision-recall curves
CONFUSION_MATRIX_CLASSES = 12  # most confused classes in the drawn confusion matrix
CONFUSED_PAIRS = 20  # ranked (ground truth, predicted as) pairs listed under it


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


# ------------------------------------------------------------------------------------------ entry points
def write_report(
    cfg: CfgNode,
    model_or_predictions: torch.nn.Module | str | Path | Sequence[dict],
    dataset_name: str,
    output_dir: str | Path,
    options: ReportOptions | None = None,
) -> Path:
    """Report for registered ``dataset_name``; returns the path of ``report.html``.

    ``model_or_predictions`` is a model (run with the evaluator of ``train_net.py --eval-only``, whose
    files land in ``output_dir/inference``), a COCO results JSON path, or a list of COCO results.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    coco_gt, image_paths = dataset_ground_truth(dataset_name, output_dir)
    if isinstance(model_or_predictions, torch.nn.Module):
        results = run_evaluator(cfg, model_or_predictions, dataset_name, output_dir / "inference")
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    elif isinstance(model_or_predictions, (str, Path)):
        results = load_results_json(model_or_predictions, coco_gt)
        tasks = result_tasks(results)
    else:
        results = list(model_or_predictions)
        tasks = result_tasks(results)
    return build_report(
        coco_gt, results, output_dir, image_paths, options or ReportOptions.from_cfg(cfg), dataset_name, tasks
    )


def write_report_from_files(
    predictions_json: str | Path,
    gt_json: str | Path,
    output_dir: str | Path,
    image_root: str | Path | None = None,
    options: ReportOptions | None = None,
) -> Path:
    """Report for a COCO results file against a COCO ground-truth file; images are looked up under
    ``image_root`` (default: the ground-truth file's folder) by their ``file_name``."""
    coco_gt = load_coco_json(gt_json)
    results = load_results_json(predictions_json, coco_gt)
    root = Path(image_root) if image_root is not None else Path(gt_json).parent
    image_paths = {img_id: root / img["file_name"] for img_id, img in coco_gt.imgs.items()}
    return build_report(
        coco_gt,
        results,
        Path(output_dir),
        image_paths,
        options or ReportOptions(),
        f"{Path(predictions_json).name} vs {gt_json}",
        result_tasks(results),
    )


def dataset_ground_truth(dataset_name: str, output_dir: Path) -> tuple[COCO, dict[int, Path]]:
    """COCO ground truth of a registered dataset and each image's path.

    Uses the dataset's ``json_file`` or converts it to COCO, as ``COCOEvaluator`` does, and records the
    converted file in the metadata so the evaluator reads the same file.
    """
    dicts = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    if not hasattr(metadata, "json_file"):
        json_path = output_dir / f"{dataset_name}_coco_format.json"
        convert_to_coco_json(dataset_name, str(json_path), allow_cached=False)
        metadata.json_file = str(json_path)
    return load_coco_json(metadata.json_file), {d["image_id"]: Path(d["file_name"]) for d in dicts}


def run_evaluator(cfg: CfgNode, model: torch.nn.Module, dataset_name: str, inference_dir: Path) -> list[dict]:
    """Run ``model`` on ``dataset_name`` with the trainer's test loader and evaluator; return COCO results."""
    loader = build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))
    evaluator = build_evaluator(cfg, dataset_name, str(inference_dir))
    inference_on_dataset(model, tqdm(loader, desc=f"inference on {dataset_name}", unit="img"), evaluator)
    results_file = inference_dir / "coco_instances_results.json"
    if not results_file.is_file():
        raise RuntimeError(f"{results_file}: the evaluator wrote no results (is {dataset_name} empty?)")
    return json.loads(results_file.read_text())


# ----------------------------------------------------------------------------------------------- builder
@dataclass(frozen=True)
class _Analysis:
    evaluations: dict[str, TaskEvaluation]
    sweeps: dict[str, ScoreSweep]
    analysis_task: str
    matches: dict[int, ImageMatches]
    confusion: ConfusionMatrix
    # Boundary IoU per image and the Boundary-AP matches; empty without masks.
    boundary_quality: dict[int, ImageBoundaryQuality] = field(default_factory=dict)
    boundary_matches: dict[int, ImageMatches] = field(default_factory=dict)


def build_report(
    coco_gt: COCO,
    results: Sequence[dict],
    output_dir: Path,
    image_paths: dict[int, Path],
    options: ReportOptions,
    title: str,
    tasks: Sequence[str] = ("bbox", "segm"),
) -> Path:
    """Evaluate ``results`` against ``coco_gt`` and write every report file into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    # Written before COCOeval, which adds its own fields to the ground-truth annotations in place.
    (output_dir / "predictions.json").write_text(json.dumps(list(results)))
    (output_dir / "ground_truth.json").write_text(json.dumps(coco_gt.dataset))
    analysis = _analyse(coco_gt, results, options, tasks)
    (output_dir / "metrics.json").write_text(json.dumps(_metrics_json(analysis, options), indent=2))
    sections = [
        _ap_section(analysis),
        _per_class_section(analysis, coco_gt, options),
        _pr_section(analysis, options),
        _confusion_section(analysis, options),
        _sweep_section(analysis, options),
        _worst_section(analysis, image_paths, options),
        _worst_boundary_section(analysis, image_paths, options),
    ]
    subtitle = (
        f"{len(coco_gt.imgs)} images, {len(coco_gt.anns)} ground-truth instances, {len(results)} predictions. "
        f"AP from pycocotools COCOeval (maxDets {options.max_dets_per_image}); analysis at score >= "
        f"{options.score_threshold:g}, IoU {options.iou_threshold:g}. Files next to this report: predictions.json, "
        "ground_truth.json (COCO format), metrics.json."
    )
    report = output_dir / REPORT_FILE
    report.write_text(page(f"Evaluation report: {title}", subtitle, sections), encoding="utf-8")
    logger.info("wrote evaluation report %s", report)
    return report


def _analyse(
    coco_gt: COCO, results: Sequence[dict], options: ReportOptions, tasks: Sequence[str]
) -> _Analysis:
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
        return _Analysis(evaluations, sweeps, analysis_task, matches[analysis_task], confusion)
    quality = image_boundary_quality(evaluations[BOUNDARY_TASK].coco_eval, options.score_threshold)
    return _Analysis(
        evaluations, sweeps, analysis_task, matches[analysis_task], confusion, quality, matches[BOUNDARY_TASK]
    )


def _metrics_json(analysis: _Analysis, options: ReportOptions) -> dict:
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


# ---------------------------------------------------------------------------------------------- sections
def _ap_section(analysis: _Analysis) -> str:
    rows = [
        [TASK_TITLES[task], *(fmt(v) for v in e.summary_metrics().values())]
        for task, e in analysis.evaluations.items()
    ]
    summaries = "".join(
        f"<h3>{TASK_TITLES[t]}</h3><pre>{escape(e.summary_text)}</pre>"
        for t, e in analysis.evaluations.items()
    )
    return section(
        "COCO AP",
        table(["task", *AP_METRICS], rows),
        note(
            "Percent. APs/APm/APl split instances by area (< 32², 32²–96², > 96² px); mask AP uses mask area. "
            "Boundary AP is mask AP matched by min(mask IoU, Boundary IoU), the boundary being the band of "
            "each mask within 2% of the image diagonal of its outline (Cheng et al., CVPR 2021)."
        ),
        f"<details><summary>COCOeval summary</summary>{summaries}</details>",
    )


def _per_class_section(analysis: _Analysis, coco_gt: COCO, options: ReportOptions) -> str:
    evaluation = analysis.evaluations[analysis.analysis_task]
    names = evaluation.class_names
    ap_by_task = {task: e.per_class_ap() for task, e in analysis.evaluations.items()}
    cat_ids = evaluation.coco_eval.params.catIds
    gt_counts = [len(coco_gt.getAnnIds(catIds=[c], iscrowd=False)) for c in cat_ids]
    headers = ["class", "instances", *(f"{TASK_TITLES[t]} AP" for t in ap_by_task), "missed", "spurious"]

    def row(k: int) -> list:
        aps = (fmt(ap[k]) for ap in ap_by_task.values())
        return [names[k], gt_counts[k], *aps, analysis.confusion.missed[k], analysis.confusion.spurious[k]]

    matching = (
        f"Missed / spurious: {TASK_TITLES[analysis.analysis_task]} matches at IoU {options.iou_threshold:g}, "
        f"predictions with score >= {options.score_threshold:g} (see the confusion matrix). Click a column "
        "header to sort."
    )
    if len(names) <= MANY_CLASSES:
        return section(
            "Per-class AP",
            _figure_img(plots.per_class_ap_figure(names, ap_by_task), "per-class AP"),
            table(headers, [row(k) for k in range(len(names))], sortable=True),
            note(matching),
        )
    ranking_ap = ap_by_task[analysis.analysis_task]
    worst, best = _worst_and_best(ranking_ap, RANKED_AP_CLASSES)
    ranked = _worst_first(ranking_ap)
    unranked = [k for k in range(len(names)) if np.isnan(ranking_ap[k])]
    rows = [[rank, *row(k)] for rank, k in enumerate(ranked, start=1)] + [["n/a", *row(k)] for k in unranked]
    return section(
        "Per-class AP",
        _figure_img(plots.ranked_ap_figure(names, ap_by_task, worst, best), "per-class AP, worst and best"),
        note(
            f"{len(names)} classes: the spread of their AP, and the {len(worst)} worst and {len(best)} best by "
            f"{TASK_TITLES[analysis.analysis_task]} AP. The table ranks every class, worst first (classes without "
            "ground truth last); metrics.json has all numbers."
        ),
        scrolling(table(["rank", *headers], rows, sortable=True)),
        note(matching),
    )


def _worst_first(values: np.ndarray) -> list[int]:
    """Class indices by ascending value (ties in class order); classes without ground truth (NaN) left out."""
    return [int(k) for k in np.argsort(values, kind="stable") if not np.isnan(values[k])]


def _worst_and_best(values: np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """The ``n`` lowest and, among the rest, the ``n`` highest class indices of ``values`` (best first)."""
    ranked = _worst_first(values)
    return ranked[:n], ranked[n:][::-1][:n]


def _pr_class_groups(evaluation: TaskEvaluation, iou_threshold: float) -> dict[str, list[int]]:
    """Every class in one panel, or for many classes the worst and best few by AP at ``iou_threshold``."""
    num_classes = len(evaluation.class_names)
    if num_classes <= MANY_CLASSES:
        return {"per class": list(range(num_classes))}
    ap = np.mean(per_class_curves(evaluation.coco_eval, iou_threshold), axis=1)
    worst, best = _worst_and_best(ap, PR_CURVE_CLASSES)
    return {f"{len(worst)} worst classes": worst, f"{len(best)} best classes": best}


def _pr_section(analysis: _Analysis, options: ReportOptions) -> str:
    figures = []
    for task, evaluation in analysis.evaluations.items():
        groups = _pr_class_groups(evaluation, options.iou_threshold)
        drawn = "; ".join(
            f"{title}: {', '.join(evaluation.class_names[k] for k in indices)}" for title, indices in groups.items()
        )
        figure = plots.pr_curve_figure(evaluation, options.iou_threshold, groups)
        figures.append(_figure_img(figure, f"PR curves {TASK_TITLES[task]}, {drawn}"))
    num_classes = len(analysis.evaluations[analysis.analysis_task].class_names)
    selection = (
        f" With {num_classes} classes, only the {PR_CURVE_CLASSES} worst and best by AP at IoU "
        f"{options.iou_threshold:g} are drawn (each task ranked by its own AP)."
        if num_classes > MANY_CLASSES
        else ""
    )
    return section(
        "Precision-recall curves",
        note(
            "COCOeval's interpolated precision at its 101 recall thresholds (area all, max detections); "
            "the mean of each curve is the AP in its legend." + selection
        ),
        *figures,
    )


def _confusion_section(analysis: _Analysis, options: ReportOptions) -> str:
    task = TASK_TITLES[analysis.analysis_task]
    title = f"{task} IoU >= {options.iou_threshold:g}, score >= {options.score_threshold:g}"
    matching = note(
        "Predictions are matched to ground truth of any class, highest score first, each to the unmatched "
        "instance it overlaps most. Last column: ground truth no prediction found (missed); last row: "
        "predictions that match nothing (spurious)."
    )
    confusion = analysis.confusion
    if len(confusion.class_names) <= MANY_CLASSES:
        return section(
            "Confusion matrix",
            _figure_img(plots.confusion_matrix_figure(confusion, title), "confusion matrix"),
            matching,
        )
    shown = confusion.restricted(confusion.most_confused_classes(CONFUSION_MATRIX_CLASSES))
    row_sums = confusion.counts.sum(axis=1)
    pairs = [
        [rank, confusion.class_names[gt], confusion.class_names[dt], count, f"{count / row_sums[gt]:.1%}"]
        for rank, (gt, dt, count) in enumerate(confusion.top_confused_pairs(CONFUSED_PAIRS), start=1)
    ]
    return section(
        "Confusion matrix",
        note(
            f"The {len(shown.class_names)} of {len(confusion.class_names)} classes most often taken for another "
            "class or predicted in place of one (ties: most missed plus spurious); rows and columns of the other "
            "classes are left out, so a row's colors are shares of what is shown. metrics.json has the full matrix."
        ),
        _figure_img(
            plots.confusion_matrix_figure(shown, title),
            f"confusion matrix of the {len(shown.class_names)} most confused classes",
        ),
        matching,
        "<h3>Most confused pairs</h3>",
        table(["rank", "ground truth", "predicted as", "instances", "share of ground truth"], pairs, sortable=True)
        if pairs
        else note("No instance was taken for another class."),
    )


def _sweep_section(analysis: _Analysis, options: ReportOptions) -> str:
    rows = []
    for task, sweep in analysis.sweeps.items():
        best_t, best_p, best_r, best_f1 = sweep.best()
        p, r, f1 = sweep.at(options.score_threshold)
        rows.append(
            [
                TASK_TITLES[task],
                fmt(best_t),
                fmt(best_p, 3),
                fmt(best_r, 3),
                fmt(best_f1, 3),
                fmt(p, 3),
                fmt(r, 3),
                fmt(f1, 3),
            ]
        )
    headers = [
        "task",
        "best threshold",
        "precision",
        "recall",
        "F1",
        f"precision @ {options.score_threshold:g}",
        f"recall @ {options.score_threshold:g}",
        f"F1 @ {options.score_threshold:g}",
    ]
    return section(
        "Score-threshold sweep",
        _figure_img(plots.score_sweep_figure(analysis.sweeps, options.score_threshold), "score threshold sweep"),
        table(headers, rows),
        note(
            f"All classes pooled; a prediction is correct when COCOeval matched it at IoU {options.iou_threshold:g}."
        ),
    )


def _worst_image_panels(
    m: ImageMatches, coco_gt: COCO, coco_dt: COCO, image: np.ndarray, threshold: float
) -> np.ndarray:
    """Ground truth (left: found or missed) and predictions >= ``threshold`` (right: correct, wrong, ignored)."""
    scale = _PANEL_WIDTH / image.shape[1]
    gts = [coco_gt.anns[i] for i in m.gt_ids]
    gt_colors = [_MATCH if s >= threshold else _ERROR for s in m.gt_match_scores]
    gt_panel = draw_coco_instances(
        image, coco_gt, gts, [coco_gt.cats[a["category_id"]]["name"] for a in gts], gt_colors, scale
    )
    shown = [
        (i, _MATCH if ok else _ERROR)
        for i, s, ok in zip(m.dt_ids, m.dt_scores, m.dt_is_match)
        if s >= threshold
    ]
    shown += [(i, _IGNORED) for i in m.ignored_dt_ids if coco_dt.anns[i]["score"] >= threshold]
    dts = [coco_dt.anns[i] for i, _ in shown]
    labels = [f"{coco_gt.cats[d['category_id']]['name']} {d['score'] * 100:.0f}%" for d in dts]
    dt_panel = draw_coco_instances(image, coco_dt, dts, labels, [color for _, color in shown], scale)
    return side_by_side(gt_panel, dt_panel)


def _image_figures(
    items: Sequence[tuple[ImageMatches, str]], coco_eval, image_paths: dict[int, Path], threshold: float
) -> tuple[list[str], int]:
    """One captioned ground-truth / prediction panel pair per ``(matches, caption)``; also how many image
    files were missing (drawn on blank canvases)."""
    figures, missing = [], 0
    for m, caption in tqdm(items, desc="image panels", unit="img", leave=False):
        info = coco_eval.cocoGt.imgs[m.image_id]
        image, found = read_image_or_blank(image_paths.get(m.image_id), info["height"], info["width"])
        missing += not found
        panels = _worst_image_panels(m, coco_eval.cocoGt, coco_eval.cocoDt, image, threshold)
        caption = f"image {m.image_id} ({info['file_name']}): {caption} (left: ground truth, right: predictions)"
        figures.append(
            f"<figure><figcaption>{escape(caption)}</figcaption>{png_img(_png(panels), caption)}</figure>"
        )
    if missing:
        logger.warning("%d of %d images could not be read; drawn on blank canvases", missing, len(items))
    return figures, missing


def _legend() -> str:
    spans = "".join(
        f'<span style="background:{mcolors.to_hex(color)}">{name}</span>'
        for name, color in (("matched", _MATCH), ("missed / wrong", _ERROR), ("ignored (crowd)", _IGNORED))
    )
    return f'<p class="legend">{spans}</p>'


def _missing_note(missing: int) -> str:
    return f" {missing} image files were not found and are drawn on gray canvases." if missing else ""


def _worst_section(analysis: _Analysis, image_paths: dict[int, Path], options: ReportOptions) -> str:
    coco_eval = analysis.evaluations[analysis.analysis_task].coco_eval
    threshold = options.score_threshold
    worst = worst_images(analysis.matches, threshold, options.num_worst_images)
    items = []
    for m in worst:
        tp, fp, fn = m.counts(threshold)
        items.append((m, f"F1 {m.f1(threshold):.2f}, correct {tp}, wrong {fp}, missed {fn}"))
    figures, missing = _image_figures(items, coco_eval, image_paths, threshold)
    return section(
        f"{len(worst)} worst images",
        note(
            f"Lowest per-image F1 ({TASK_TITLES[analysis.analysis_task]}, COCOeval matches at IoU "
            f"{options.iou_threshold:g}, score >= {threshold:g}); images without errors are not listed."
            + _missing_note(missing)
        ),
        _legend(),
        *(figures or [note("No image has errors at this threshold.")]),
    )


def _worst_boundary_section(analysis: _Analysis, image_paths: dict[int, Path], options: ReportOptions) -> str:
    """Images whose outlines are found worst: lowest mean Boundary IoU over their ground-truth instances."""
    if BOUNDARY_TASK not in analysis.evaluations:
        return ""
    threshold = options.score_threshold
    worst = worst_boundary_images(analysis.boundary_quality, options.num_worst_images)
    items = [
        (
            analysis.boundary_matches[q.image_id],
            f"mean Boundary IoU {q.mean_iou:.2f} over {len(q.best_iou)} instances (lowest {min(q.best_iou):.2f})",
        )
        for q in worst
    ]
    coco_eval = analysis.evaluations[BOUNDARY_TASK].coco_eval
    figures, missing = _image_figures(items, coco_eval, image_paths, threshold)
    return section(
        f"{len(worst)} worst images by Boundary IoU",
        note(
            "Per ground-truth instance, the best min(mask IoU, Boundary IoU) with a prediction of its class at "
            f"score >= {threshold:g} (0 when there is none); images ranked by the mean over their instances, "
            f"lowest first. Colors: Boundary-AP matches at IoU {options.iou_threshold:g}." + _missing_note(missing)
        ),
        _legend(),
        *(figures or [note("Every outline is found exactly at this threshold.")]),
    )


def _figure_img(fig: Figure, alt: str) -> str:
    return png_img(plots.figure_to_png(fig), alt)


def _png(image_rgb: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", np.ascontiguousarray(image_rgb[:, :, ::-1]))
    if not ok:  # pragma: no cover - cv2 always encodes uint8 RGB
        raise RuntimeError("could not encode a report image as PNG")
    return png.tobytes()
