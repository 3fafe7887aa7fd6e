"""The report's metric sections: AP table, per-class AP, precision-recall curves, confusion matrix and score
sweep. With many classes the figures show a ranked selection (an 80-entry legend or matrix cannot be read);
tables stay complete and metrics.json keeps every number."""

from __future__ import annotations

from html import escape

import numpy as np
from matplotlib.figure import Figure
from pycocotools.coco import COCO

from .. import plots
from ..coco_metrics import AP_METRICS, TASK_TITLES, TaskEvaluation
from ..pr_curves import per_class_curves
from .analysis import ReportAnalysis
from .html_blocks import fmt, note, png_img, scrolling, section, table
from .options import ReportOptions

MANY_CLASSES = 15  # above this many classes, per-class figures show a ranked selection
RANKED_AP_CLASSES = 10  # worst and best classes in the per-class AP bars
PR_CURVE_CLASSES = 5  # worst and best classes with precision-recall curves
CONFUSION_MATRIX_CLASSES = 12  # most confused classes in the drawn confusion matrix
CONFUSED_PAIRS = 20  # ranked (ground truth, predicted as) pairs listed under it


def ap_section(analysis: ReportAnalysis) -> str:
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


def per_class_section(analysis: ReportAnalysis, coco_gt: COCO, options: ReportOptions) -> str:
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


def pr_section(analysis: ReportAnalysis, options: ReportOptions) -> str:
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


def confusion_section(analysis: ReportAnalysis, options: ReportOptions) -> str:
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


def sweep_section(analysis: ReportAnalysis, options: ReportOptions) -> str:
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


def _figure_img(fig: Figure, alt: str) -> str:
    return png_img(plots.figure_to_png(fig), alt)
