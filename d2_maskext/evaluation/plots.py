"""Report figures built on matplotlib's Agg canvas (no pyplot, no display); ``figure_to_png`` renders them.

The builders return the ``Figure`` so that what a figure shows (panels, legend entries) can be checked.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .coco_metrics import TASK_TITLES, TaskEvaluation
from .confusion import ConfusionMatrix
from .image_matches import ScoreSweep
from .pr_curves import mean_curve, per_class_curves, recall_thresholds


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def per_class_ap_figure(class_names: list[str], ap_by_task: dict[str, np.ndarray]) -> Figure:
    """Grouped bars: one group per class, one bar per task; classes without ground truth say n/a."""
    fig = Figure(figsize=(max(6.0, 0.9 * len(class_names) + 2), 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(ap_by_task))
    for j, (task, ap) in enumerate(ap_by_task.items()):
        bars = ax.bar(
            x + (j - (len(ap_by_task) - 1) / 2) * width, np.nan_to_num(ap), width, label=TASK_TITLES[task]
        )
        ax.bar_label(bars, labels=["n/a" if np.isnan(v) else f"{v:.1f}" for v in ap], fontsize=7, padding=1)
    ax.set_xticks(
        x,
        class_names,
        rotation=30 if len(class_names) > 8 else 0,
        ha="right" if len(class_names) > 8 else "center",
    )
    ax.set_ylabel("AP (IoU 0.50:0.95)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return fig


def ranked_ap_figure(
    class_names: list[str], ap_by_task: dict[str, np.ndarray], worst: Sequence[int], best: Sequence[int]
) -> Figure:
    """For many classes: the spread of AP over all classes (its legend names the tasks, whose colors the bars
    share), then horizontal bars of the ``worst`` and ``best`` class indices."""
    fig = Figure(figsize=(13, 1.2 + 0.32 * max(len(worst), len(best)) * max(1, len(ap_by_task)) ** 0.5))
    spread, *panels = fig.subplots(1, 3, gridspec_kw={"width_ratios": (1, 1.2, 1.2)})
    for task, ap in ap_by_task.items():
        valid = ap[~np.isnan(ap)]
        spread.hist(
            valid, bins=np.linspace(0, 100, 21), histtype="step", linewidth=1.5, label=TASK_TITLES[task]
        )
    spread.set_title(f"AP of all {len(class_names)} classes", fontsize=10)
    spread.set_xlabel("AP (IoU 0.50:0.95)")
    spread.set_ylabel("classes")
    spread.legend(fontsize=7)
    height = 0.8 / max(1, len(ap_by_task))
    for ax, indices, title in ((panels[0], worst, "worst"), (panels[1], best, "best")):
        y = np.arange(len(indices))
        for j, ap in enumerate(ap_by_task.values()):
            values = ap[list(indices)]
            bars = ax.barh(y + (j - (len(ap_by_task) - 1) / 2) * height, np.nan_to_num(values), height)
            labels = ["n/a" if np.isnan(v) else f"{v:.1f}" for v in values]
            ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
        ax.set_yticks(y, [class_names[k] for k in indices])
        ax.invert_yaxis()
        ax.set_xlim(0, 110)
        ax.set_xlabel("AP (IoU 0.50:0.95)")
        ax.set_title(f"{len(indices)} {title} classes", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def pr_curve_figure(
    evaluation: TaskEvaluation, iou_threshold: float, class_groups: dict[str, Sequence[int]]
) -> Figure:
    """One panel per ``class_groups`` entry (panel title -> class indices) with each class's curve at
    ``iou_threshold``, then the class mean at IoU 0.50, 0.75 and over 0.50:0.95."""
    coco_eval = evaluation.coco_eval
    recall = recall_thresholds(coco_eval)
    curves = per_class_curves(coco_eval, iou_threshold)
    fig = Figure(figsize=(5.5 * (len(class_groups) + 1), 4))
    *group_axes, right = np.atleast_1d(fig.subplots(1, len(class_groups) + 1))
    for ax, (title, indices) in zip(group_axes, class_groups.items()):
        for k in indices:
            if not np.all(np.isnan(curves[k])):
                ap = np.mean(curves[k]) * 100
                ax.plot(
                    recall,
                    curves[k],
                    label=f"{evaluation.class_names[k]} (AP{iou_threshold * 100:.0f} {ap:.1f})",
                )
        ax.set_title(f"{TASK_TITLES[evaluation.iou_type]}: {title}, IoU {iou_threshold:.2f}", fontsize=10)
        # Worst classes' curves run along the bottom, the best ones' along the top: the legend avoids them.
        ax.legend(fontsize=7, loc="best")
    for label, iou in (("IoU 0.50", 0.5), ("IoU 0.75", 0.75), ("IoU 0.50:0.95", None)):
        curve = mean_curve(coco_eval, iou)
        right.plot(
            recall,
            curve,
            label=f"{label} (AP {np.nanmean(curve) * 100:.1f})" if not np.all(np.isnan(curve)) else label,
        )
    right.set_title(f"{TASK_TITLES[evaluation.iou_type]}: mean over classes", fontsize=10)
    right.legend(fontsize=7, loc="lower left")
    for ax in (*group_axes, right):
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    return fig


def confusion_matrix_figure(confusion: ConfusionMatrix, title: str) -> Figure:
    """Counts, colored by share of their ground-truth row (background row: by share of its own row)."""
    counts = confusion.counts.astype(float)
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    n = len(confusion.labels)
    fig = Figure(figsize=(1.0 + 0.75 * n, 0.8 + 0.65 * n))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for r in range(n):
        for c in range(n):
            if r == n - 1 and c == n - 1:
                continue
            ax.text(
                c,
                r,
                str(int(counts[r, c])),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if shares[r, c] > 0.6 else "black" if counts[r, c] else "#bbb",
            )
    ax.set_xticks(range(n), confusion.labels, rotation=35, ha="right")
    ax.set_yticks(range(n), confusion.labels)
    ax.set_xlabel("predicted (background = missed)")
    ax.set_ylabel("ground truth (background = spurious)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of row")
    return fig


def score_sweep_figure(sweeps: dict[str, ScoreSweep], report_threshold: float) -> Figure:
    """Precision, recall and F1 against the score threshold, one panel per task."""
    fig = Figure(figsize=(5.5 * len(sweeps), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(sweeps)))
    for ax, (task, sweep) in zip(axes, sweeps.items()):
        ax.plot(sweep.thresholds, sweep.precision, label="precision")
        ax.plot(sweep.thresholds, sweep.recall, label="recall")
        ax.plot(sweep.thresholds, sweep.f1, label="F1", linewidth=2)
        if not np.all(np.isnan(sweep.f1)):
            best_t, _, _, best_f1 = sweep.best()
            ax.axvline(best_t, color="gray", linestyle=":", label=f"best F1 {best_f1:.2f} @ {best_t:.2f}")
        ax.axvline(
            report_threshold,
            color="black",
            linestyle="--",
            linewidth=0.8,
            label=f"report threshold {report_threshold:.2f}",
        )
        ax.set_title(f"{TASK_TITLES[task]}")
        ax.set_xlabel("score threshold")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    return fig
