"""The report's image sections: the images with the lowest F1 and those with the worst outlines (Boundary
IoU), each drawn as ground truth beside predictions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from html import escape
from pathlib import Path

import cv2
import matplotlib.colors as mcolors
import numpy as np
from pycocotools.coco import COCO
from tqdm import tqdm

from ...visualization import draw_coco_instances, read_image_or_blank, side_by_side
from ..boundary import BOUNDARY_TASK, worst_boundary_images
from ..coco_metrics import TASK_TITLES
from ..image_matches import ImageMatches, worst_images
from .analysis import ReportAnalysis
from .html_blocks import note, png_img, section
from .options import ReportOptions

logger = logging.getLogger(__name__)

_MATCH = (0.15, 0.65, 0.25)
_ERROR = (0.9, 0.12, 0.12)
_IGNORED = (0.55, 0.55, 0.55)
_PANEL_WIDTH = 360


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


def worst_section(analysis: ReportAnalysis, image_paths: dict[int, Path], options: ReportOptions) -> str:
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


def worst_boundary_section(analysis: ReportAnalysis, image_paths: dict[int, Path], options: ReportOptions) -> str:
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


def _png(image_rgb: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", np.ascontiguousarray(image_rgb[:, :, ::-1]))
    if not ok:  # pragma: no cover - cv2 always encodes uint8 RGB
        raise RuntimeError("could not encode a report image as PNG")
    return png.tobytes()
