"""Report figures rendered with matplotlib's Agg canvas straight to PNG bytes (no pyplot, no display)."""

from __future__ import annotations

import io

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


def per_class_ap_chart(class_names: list[str], ap_by_task: dict[str, np.ndarray]) -> bytes:
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
    return figure_to_png(fig)


def pr_curve_chart(evaluation: TaskEvaluation, iou_threshold: float) -> bytes:
    """Left: each class at ``iou_threshold``. Right: class mean at IoU 0.50, 0.75 and over 0.50:0.95."""
    coco_eval = evaluation.coco_eval
    recall = recall_thresholds(coco_eval)
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for name, precision in zip(evaluation.class_names, per_class_curves(coco_eval, iou_threshold)):
        if not np.all(np.isnan(precision)):
            left.plot(
                recall,
                precision,
                label=f"{name} (AP{iou_threshold * 100:.0f} {np.mean(precision) * 100:.1f})",
            )
    left.set_title(f"{TASK_TITLES[evaluation.iou_type]}: per class, IoU {iou_threshold:.2f}")
    for label, iou in (("IoU 0.50", 0.5), ("IoU 0.75", 0.75), ("IoU 0.50:0.95", None)):
        curve = mean_curve(coco_eval, iou)
        right.plot(
            recall,
            curve,
            label=f"{label} (AP {np.nanmean(curve) * 100:.1f})" if not np.all(np.isnan(curve)) else label,
        )
    right.set_title(f"{TASK_TITLES[evaluation.iou_type]}: mean over classes")
    for ax in (left, right):
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    return figure_to_png(fig)


def confusion_matrix_chart(confusion: ConfusionMatrix, title: str) -> bytes:
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
                color="white" if shares[r, c] > 0.6 else "black",
            )
    ax.set_xticks(range(n), confusion.labels, rotation=35, ha="right")
    ax.set_yticks(range(n), confusion.labels)
    ax.set_xlabel("predicted (background = missed)")
    ax.set_ylabel("ground truth (background = spurious)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of row")
    return figure_to_png(fig)


def score_sweep_chart(sweeps: dict[str, ScoreSweep], report_threshold: float) -> bytes:
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
    return figure_to_png(fig)
