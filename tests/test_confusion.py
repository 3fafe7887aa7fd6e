"""Confusion matrix (classes + background) and COCOeval's per-image matches on hand-made cases."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

from d2_maskext.evaluation.coco_metrics import evaluate_coco_results
from d2_maskext.evaluation.confusion import compute_confusion_matrix
from d2_maskext.evaluation.image_matches import collect_image_matches, score_sweep, worst_images

CATEGORIES = [{"id": 1, "name": "A"}, {"id": 2, "name": "B"}, {"id": 3, "name": "C"}]


def _coco(images: list[int], annotations: list[dict]) -> COCO:
    coco = COCO()
    anns = []
    for i, a in enumerate(annotations, start=1):
        x, y, w, h = a["bbox"]
        anns.append(
            {
                "id": i,
                "area": w * h,
                "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                **a,
            }
        )
    coco.dataset = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 100} for i in images],
        "annotations": anns,
        "categories": CATEGORIES,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load(gt: COCO, results: list[dict]) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes([dict(r) for r in results])


def _gt(image_id: int, cat: int, bbox: list[float], iscrowd: int = 0) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": iscrowd}


def _dt(image_id: int, cat: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


@pytest.fixture(scope="module")
def hand_made():
    """Image 1: A found, B predicted as C, C missed, a duplicate A, a B on a B crowd region and a
    low-score B. Image 2: no ground truth, one C prediction. Image 3: one B, no prediction."""
    gt = _coco(
        [1, 2, 3],
        [
            _gt(1, 1, [0, 0, 10, 10]),
            _gt(1, 2, [20, 20, 10, 10]),
            _gt(1, 3, [40, 40, 10, 10]),
            _gt(1, 2, [60, 60, 20, 20], iscrowd=1),
            _gt(3, 2, [5, 5, 30, 30]),
        ],
    )
    results = [
        _dt(1, 1, [0, 0, 10, 10], 0.9),  # A -> A
        _dt(1, 3, [20, 20, 10, 10], 0.8),  # B -> C
        _dt(1, 1, [0, 1, 10, 10], 0.7),  # duplicate of A: spurious
        _dt(1, 2, [62, 62, 10, 10], 0.95),  # inside the crowd region: ignored
        _dt(1, 2, [0, 0, 10, 10], 0.3),  # below the score threshold
        _dt(2, 3, [10, 10, 20, 20], 0.6),  # spurious C
    ]
    return gt, results


def test_confusion_counts_equal_hand_made_case(hand_made):
    gt, results = hand_made
    confusion = compute_confusion_matrix(
        gt, _load(gt, results), "bbox", iou_threshold=0.5, score_threshold=0.5
    )
    expected = np.array(
        [
            # A  B  C  background (missed)
            [1, 0, 0, 0],  # A
            [0, 0, 1, 1],  # B: one predicted as C, the one of image 3 missed
            [0, 0, 0, 1],  # C missed
            [1, 0, 1, 0],  # background: duplicate A and the C of image 2 (spurious)
        ]
    )
    np.testing.assert_array_equal(confusion.counts, expected)
    assert confusion.labels == ["A", "B", "C", "background"]
    np.testing.assert_array_equal(confusion.missed, [0, 1, 1])
    np.testing.assert_array_equal(confusion.spurious, [1, 0, 1])


def test_confusion_thresholds_change_the_counts(hand_made):
    gt, results = hand_made
    dt = _load(gt, results)
    low_score = compute_confusion_matrix(gt, dt, "bbox", iou_threshold=0.5, score_threshold=0.0)
    # The 0.3 B box is a second duplicate of A: one more spurious B.
    assert low_score.counts[3, 1] == 1 and low_score.counts.sum() == 7
    # At IoU 0.95 the duplicate A (IoU 0.82) no longer matches anything, but the exact A still does.
    strict = compute_confusion_matrix(gt, dt, "bbox", iou_threshold=0.95, score_threshold=0.5)
    assert strict.counts[0, 0] == 1 and strict.counts[3, 0] == 1


def test_confusion_uses_mask_iou_for_segm():
    """A filled square predicted for a square frame: boxes match exactly, masks overlap 36 %."""
    frame = np.zeros((100, 100), np.uint8)
    frame[10:50, 10:50] = 1
    frame[14:46, 14:46] = 0
    filled = np.zeros((100, 100), np.uint8)
    filled[10:50, 10:50] = 1

    def rle(mask: np.ndarray) -> dict:
        r = mask_util.encode(np.asfortranarray(mask))
        r["counts"] = r["counts"].decode("ascii")
        return r

    gt = _coco([1], [_gt(1, 1, [10, 10, 40, 40])])
    gt.dataset["annotations"][0]["segmentation"] = rle(frame)
    dt = _load(gt, [{"image_id": 1, "category_id": 1, "segmentation": rle(filled), "score": 0.9}])
    by_box = compute_confusion_matrix(gt, dt, "bbox")
    by_mask = compute_confusion_matrix(gt, dt, "segm")
    assert by_box.counts[0, 0] == 1 and by_box.counts.sum() == 1
    assert by_mask.counts[0, 3] == 1 and by_mask.counts[3, 0] == 1 and by_mask.counts[0, 0] == 0


def test_image_matches_and_sweep_follow_cocoeval(hand_made):
    gt, results = hand_made
    evaluation = evaluate_coco_results(gt, results, "bbox")
    matches = collect_image_matches(evaluation.coco_eval, 0.5)
    # COCOeval matches per class: only the exact A is correct; the crowd-covered B is ignored.
    assert matches[1].counts(0.5) == (1, 2, 2)  # correct A; wrong C and duplicate A; B and C missed
    assert matches[2].counts(0.5) == (0, 1, 0)
    assert matches[3].counts(0.5) == (0, 0, 1)
    assert len(matches[1].ignored_dt_ids) == 1
    assert [m.image_id for m in worst_images(matches, 0.5, 2)] == [2, 3]  # F1 0 and one error each, by id
    sweep = score_sweep(matches, np.array([0.0, 0.5, 0.85, 0.95]))
    np.testing.assert_allclose(sweep.recall, [1 / 4, 1 / 4, 1 / 4, 0])
    np.testing.assert_allclose(sweep.precision[:3], [1 / 5, 1 / 4, 1 / 1])
    assert np.isnan(sweep.precision[3])
    np.testing.assert_allclose(sweep.f1[:3], [2 / 9, 2 / 8, 2 / 5])
    assert sweep.best()[0] == 0.85
