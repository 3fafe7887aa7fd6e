"""Boundary AP on hand-made masks whose Boundary IoU is worked out by hand in each test."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from helpers.dataset_builders import unique_name
from pycocotools.coco import COCO

from d2_maskext.evaluation.boundary import (
    boundary_iou_matrix,
    boundary_width,
    evaluate_boundary_results,
    image_boundary_quality,
    mask_boundaries,
)
from d2_maskext.evaluation.coco_evaluator import MaskExtCOCOEvaluator
from d2_maskext.evaluation.coco_metrics import evaluate_coco_results


def square(size: int, top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[top : top + height, left : left + width] = 1
    return mask


def rle(mask: np.ndarray) -> dict:
    encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    encoded["counts"] = encoded["counts"].decode("ascii")
    return encoded


def coco_ground_truth(size: int, masks: list[np.ndarray], crowd: tuple[int, ...] = ()) -> COCO:
    annotations = []
    for k, mask in enumerate(masks):
        encoded = rle(mask)
        annotations.append(
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": encoded,
                "area": float(mask.sum()),
                "bbox": [float(v) for v in mask_util.toBbox(encoded)],
                "iscrowd": int(k in crowd),
            }
        )
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "height": size, "width": size, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def results(masks: list[np.ndarray], scores: list[float] | None = None) -> list[dict]:
    scores = scores or [0.9] * len(masks)
    return [{"image_id": 1, "category_id": 1, "segmentation": rle(m), "score": s} for m, s in zip(masks, scores)]


def test_boundary_width_is_two_percent_of_the_diagonal_and_at_least_one_pixel():
    assert boundary_width(100, 100) == 3  # 0.02 * 141.4 = 2.83
    assert boundary_width(200, 200) == 6  # 0.02 * 282.8 = 5.66
    assert boundary_width(4, 4) == 1  # 0.11 rounds to 0


def test_boundary_band_is_mask_minus_erosion_and_the_image_edge_counts_as_background():
    inner = square(20, 5, 5, 10, 10)
    band = mask_boundaries(inner[:, :, None], 2)[:, :, 0]
    assert band.sum() == 100 - 36  # 10x10 minus its 6x6 erosion
    assert not band[7:13, 7:13].any()
    full = np.ones((20, 20, 1), np.uint8)
    assert mask_boundaries(full, 1)[:, :, 0].sum() == 400 - 18 * 18


def test_shifted_square_boundary_iou_by_hand():
    # 100 px image: band 3. 40x40 squares shifted by 4 columns. Mask IoU = 40*36 / (40*44) = 0.818.
    # Each band has 1600 - 34*34 = 444 px; they share only the 6 full rows (top/bottom 3) over the 36
    # common columns = 216 px (the vertical strips, cols 20-22/57-59 vs 24-26/61-63, are disjoint).
    # Boundary IoU = 216 / (444 + 444 - 216) = 216 / 672.
    gt, dt = square(100, 20, 20, 40, 40), square(100, 20, 24, 40, 40)
    iou = boundary_iou_matrix([rle(dt)], [rle(gt)], [0], band=3)
    assert iou.shape == (1, 1)
    assert iou[0, 0] == pytest.approx(216 / 672)

    coco_gt = coco_ground_truth(100, [gt])
    boundary = evaluate_boundary_results(coco_gt, results([dt]))
    mask = evaluate_coco_results(coco_gt, results([dt]), "segm")
    assert mask.summary_metrics()["AP"] == pytest.approx(70.0)  # 0.818 matches at IoU 0.50..0.80
    assert boundary.summary_metrics()["AP"] == pytest.approx(0.0)  # 0.321 matches at none
    assert boundary.summary_metrics()["AP50"] == pytest.approx(0.0)


def test_thin_boundary_error_that_mask_iou_barely_sees():
    # 200 px image: band 6. GT 80x80; the prediction misses a 2 px strip along one side (80x78).
    # Mask IoU = 6240 / 6400 = 0.975. GT band 6400 - 68*68 = 1776 px, prediction band 6240 - 68*66 = 1752.
    # Shared: 12 full rows x 78 cols = 936, plus 68 rows x (6 left + 4 right cols 74-77) = 680 -> 1616.
    # Boundary IoU = 1616 / (1776 + 1752 - 1616) = 1616 / 1912 = 0.845.
    gt, dt = square(200, 60, 60, 80, 80), square(200, 60, 60, 80, 78)
    coco_gt = coco_ground_truth(200, [gt])
    iou = boundary_iou_matrix([rle(dt)], [rle(gt)], [0], band=boundary_width(200, 200))
    assert iou[0, 0] == pytest.approx(1616 / 1912)
    mask = evaluate_coco_results(coco_gt, results([dt]), "segm").summary_metrics()
    boundary = evaluate_boundary_results(coco_gt, results([dt])).summary_metrics()
    assert mask["AP"] == pytest.approx(100.0)  # 0.975 clears every threshold up to 0.95
    assert boundary["AP"] == pytest.approx(70.0)  # 0.845 clears 0.50..0.80
    assert boundary["AP50"] == pytest.approx(100.0) and boundary["AP75"] == pytest.approx(100.0)


def test_identical_masks_score_100_and_no_predictions_score_0():
    masks = [square(64, 4, 4, 20, 20), square(64, 30, 30, 25, 12)]
    coco_gt = coco_ground_truth(64, masks)
    assert evaluate_boundary_results(coco_gt, results(masks)).summary_metrics()["AP"] == pytest.approx(100.0)
    assert evaluate_boundary_results(coco_gt, []).summary_metrics()["AP"] == pytest.approx(0.0)


def test_crowd_regions_are_matched_by_mask_iou_and_ignored():
    # The prediction lies inside the crowd region: crowd IoU = |dt ∩ crowd| / |dt| = 1, while its boundary
    # overlaps the crowd's outline hardly at all. It must be ignored, not counted as a false positive.
    thing, crowd = square(100, 5, 5, 20, 20), square(100, 40, 40, 50, 50)
    inside = square(100, 50, 50, 20, 20)
    iou = boundary_iou_matrix([rle(inside)], [rle(thing), rle(crowd)], [0, 1], band=3)
    assert iou[0, 1] == pytest.approx(1.0) and iou[0, 0] == 0.0
    coco_gt = coco_ground_truth(100, [thing, crowd], crowd=(1,))
    evaluation = evaluate_boundary_results(coco_gt, results([thing, inside], [0.5, 0.9]))
    assert evaluation.summary_metrics()["AP"] == pytest.approx(100.0)


def test_image_quality_is_the_best_boundary_iou_per_instance_above_the_score_threshold():
    gt = square(100, 20, 20, 40, 40)
    coco_gt = coco_ground_truth(100, [gt])
    shifted = square(100, 20, 24, 40, 40)
    evaluation = evaluate_boundary_results(coco_gt, results([gt, shifted], [0.3, 0.9]))
    assert image_boundary_quality(evaluation.coco_eval, 0.5)[1].mean_iou == pytest.approx(216 / 672)
    assert image_boundary_quality(evaluation.coco_eval, 0.2)[1].mean_iou == pytest.approx(1.0)
    assert image_boundary_quality(evaluation.coco_eval, 0.95)[1].best_iou == (0.0,)


def test_evaluator_reports_boundary_next_to_mask_ap(tmp_path):
    gt_mask, dt_mask = square(100, 20, 20, 40, 40), square(100, 20, 24, 40, 40)
    coco_gt = coco_ground_truth(100, [gt_mask])
    json_file = tmp_path / "gt.json"
    json_file.write_text(json.dumps(coco_gt.dataset))
    name = unique_name("boundary_eval")
    MetadataCatalog.get(name).set(
        json_file=str(json_file), thing_classes=["thing"], thing_dataset_id_to_contiguous_id={1: 0}
    )
    evaluator = MaskExtCOCOEvaluator(name, tasks=("bbox", "segm"), output_dir=str(tmp_path), use_fast_impl=False)
    evaluator.reset()
    instances = Instances((100, 100))
    instances.pred_boxes = Boxes(torch.tensor([[24.0, 20.0, 64.0, 60.0]]))
    instances.scores = torch.tensor([0.9])
    instances.pred_classes = torch.tensor([0])
    instances.pred_masks = torch.from_numpy(dt_mask[None].astype(bool))
    evaluator.process([{"image_id": 1}], [{"instances": instances}])
    metrics = evaluator.evaluate()
    assert metrics["segm"]["AP"] == pytest.approx(70.0)
    assert metrics["boundary"]["AP"] == pytest.approx(0.0)
    assert set(metrics["boundary"]) >= {"AP", "AP50", "AP75", "AP-thing"}
