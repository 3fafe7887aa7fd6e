"""Evaluation report: AP equals pycocotools' COCOeval, the HTML is self-contained, the CLI works.

The tiny model trained once for the session (conftest.py) gives the report real detections; AP equality is
also checked on hand-made predictions that exercise every kind of match and miss.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers.train_net_runner import load_script, tiny_cfg
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from d2_maskext.engine import Trainer
from d2_maskext.evaluation import build_evaluator, write_report
from d2_maskext.evaluation.boundary import evaluate_boundary_results
from d2_maskext.evaluation.coco_metrics import (
    AP_METRICS,
    evaluate_coco_results,
    load_coco_json,
    load_results_json,
)
from d2_maskext.evaluation.pr_curves import mean_curve

VAL = "maskext_synth_tiny_val"
SECTIONS = ("COCO AP", "Per-class AP", "Precision-recall curves", "Confusion matrix", "Score-threshold sweep")


@pytest.fixture(scope="module")
def tiny_model_cfg(tmp_path_factory, tiny_trained_weights: Path) -> CfgNode:
    """Config of the session's trained tiny Mask R-CNN on the tiny val split, every detection kept."""
    return tiny_cfg(
        tmp_path_factory.mktemp("eval_tiny_model"),
        "MODEL.WEIGHTS", str(tiny_trained_weights),
        "DATASETS.TEST", f'("{VAL}",)',
        "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "TEST.DETECTIONS_PER_IMAGE", "10",
    )  # fmt: skip


@pytest.fixture(scope="module")
def val_gt() -> tuple[Path, Path]:
    """(COCO ground-truth JSON, image folder) of the tiny synthetic val split."""
    DatasetCatalog.get(VAL)
    metadata = MetadataCatalog.get(VAL)
    return Path(metadata.json_file), Path(metadata.image_root)


def _pycocotools(gt_json: Path, results: list[dict], iou_type: str) -> COCOeval:
    """COCOeval run directly, as Detectron2 does it: mask AP without boxes, so mask areas decide s/m/l."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
        dets = copy.deepcopy(results)
        if iou_type == "segm":
            for d in dets:
                d.pop("bbox", None)
        coco_eval = COCOeval(gt, gt.loadRes(dets), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def _assert_metrics_equal_pycocotools(metrics: dict, gt_json: Path, results: list[dict]) -> None:
    for task in ("bbox", "segm"):
        reference = _pycocotools(gt_json, results, task)
        for i, name in enumerate(AP_METRICS):
            expected = reference.stats[i] * 100 if reference.stats[i] >= 0 else None
            assert metrics[task][name] == pytest.approx(expected, abs=1e-9), (task, name)
        precision = reference.eval["precision"][:, :, :, 0, -1]
        names = [reference.cocoGt.cats[c]["name"] for c in reference.params.catIds]
        for k, name in enumerate(names):
            valid = precision[:, :, k][precision[:, :, k] > -1]
            expected = float(valid.mean() * 100) if valid.size else None
            assert metrics[task]["per_class_AP"][name] == pytest.approx(expected, abs=1e-9), (task, name)


class _HtmlImages(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.img_sources: list[str] = []
        self.external: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.img_sources.append(attrs.get("src", ""))
        # The inline table-sorting script is allowed; anything loaded from elsewhere is not.
        if tag in ("link", "iframe") or (tag != "img" and "src" in attrs):
            self.external.append(tag)
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def _assert_self_contained(report: Path, num_worst: int) -> list[str]:
    parser = _HtmlImages()
    parser.feed(report.read_text(encoding="utf-8"))
    parser.close()
    assert not parser.external
    for section in SECTIONS:
        assert section in parser.headings
    assert f"{num_worst} worst images" in parser.headings
    assert f"{num_worst} worst images by Boundary IoU" in parser.headings
    # per-class chart, one PR figure per task (box, mask, boundary), confusion matrix, sweep, worst images
    # by F1 and by Boundary IoU
    assert len(parser.img_sources) == 1 + 3 + 1 + 1 + 2 * num_worst
    prefix = "data:image/png;base64,"
    for src in parser.img_sources:
        assert src.startswith(prefix)
        png = base64.b64decode(src[len(prefix) :], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[0] > 20 and image.shape[1] > 20
    return parser.headings


@pytest.mark.slow
def test_report_for_tiny_model_equals_pycocotools(tiny_model_cfg, val_gt, tmp_path):
    cfg = tiny_model_cfg
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    out = tmp_path / "report"

    report = write_report(cfg, model, VAL, out)

    assert report == out / "report.html"
    results = json.loads((out / "predictions.json").read_text())
    assert results, "the trained tiny model detects objects on the tiny val split"
    # The report evaluated exactly what the shared evaluator (train_net.py --eval-only) produced.
    assert results == json.loads((out / "inference" / "coco_instances_results.json").read_text())
    gt_json, _ = val_gt
    assert (
        json.loads((out / "ground_truth.json").read_text())["annotations"]
        == json.loads(gt_json.read_text())["annotations"]
    )
    _assert_metrics_equal_pycocotools(json.loads((out / "metrics.json").read_text()), gt_json, results)
    _assert_self_contained(report, num_worst=cfg.TEST.REPORT.NUM_WORST_IMAGES)


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def coco_result(image_id: int, category_id: int, mask: np.ndarray, score: float) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    bbox = [float(v) for v in mask_util.toBbox(rle)]
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "segmentation": rle,
        "score": score,
    }


def _hand_made_results(gt_json: Path) -> list[dict]:
    """Shifted copies of the ground truth (some with the wrong class, some left out) and spurious boxes."""
    gt = json.loads(gt_json.read_text())
    rng = np.random.default_rng(0)
    results = []
    for i, ann in enumerate(gt["annotations"]):
        if i % 6 == 5:
            continue
        mask = _shift(mask_util.decode(ann["segmentation"]), *rng.integers(-2, 3, size=2))
        category = ann["category_id"] if i % 5 else ann["category_id"] % 5 + 1
        results.append(coco_result(ann["image_id"], category, mask, float(rng.uniform(0.3, 1.0))))
    for img in gt["images"]:
        mask = np.zeros((img["height"], img["width"]), np.uint8)
        x, y = rng.integers(0, img["width"] - 30, size=2)
        mask[y : y + 20, x : x + 25] = 1
        results.append(coco_result(img["id"], int(rng.integers(1, 6)), mask, float(rng.uniform(0.0, 0.8))))
    return results


def test_cli_report_from_json_files_equals_pycocotools(val_gt, tmp_path, capsys):
    gt_json, image_root = val_gt
    predictions = tmp_path / "hand_made.json"
    results = _hand_made_results(gt_json)
    predictions.write_text(json.dumps(results))
    out = tmp_path / "report"

    load_script("tools/eval_report.py").main(
        ["--predictions", str(predictions), "--gt", str(gt_json), "--image-root", str(image_root),
         "--output-dir", str(out), "--num-worst", "3", "--score-threshold", "0.4"]
    )  # fmt: skip

    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert 10 < metrics["bbox"]["AP"] < 95 and 5 < metrics["segm"]["AP"] < 95, metrics
    assert metrics["options"]["score_threshold"] == 0.4
    _assert_metrics_equal_pycocotools(metrics, gt_json, results)
    boundary = evaluate_boundary_results(load_coco_json(gt_json), results)
    assert metrics["boundary"]["AP"] == pytest.approx(boundary.summary_metrics()["AP"])
    assert metrics["boundary"]["AP75"] <= metrics["segm"]["AP75"]  # a stricter IoU on the same predictions
    assert set(metrics["boundary"]["per_class_AP"]) == set(metrics["segm"]["per_class_AP"])
    assert json.loads((out / "predictions.json").read_text()) == results
    _assert_self_contained(out / "report.html", num_worst=3)
    # The drawn precision-recall curves integrate to the AP: their mean is COCOeval's AP / AP50.
    reference = _pycocotools(gt_json, results, "segm")
    assert np.nanmean(mean_curve(reference)) * 100 == pytest.approx(metrics["segm"]["AP"])
    assert np.nanmean(mean_curve(reference, 0.5)) * 100 == pytest.approx(metrics["segm"]["AP50"])


def test_no_predictions_give_zero_ap(val_gt):
    gt_json, _ = val_gt
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = evaluate_coco_results(COCO(str(gt_json)), [], "segm")
    assert evaluation.summary_metrics()["AP"] == 0.0
    assert np.all(evaluation.per_class_ap() == 0.0)


def test_bad_predictions_name_the_file_and_index(val_gt, tmp_path):
    gt_json, _ = val_gt
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 0, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5},
                               {"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]))  # fmt: skip
    with pytest.raises(ValueError, match=r"bad\.json: result 1 has image_id 999"):
        load_results_json(bad, gt)
    bad.write_text(json.dumps([{"image_id": 0, "category_id": 1, "score": 0.5}]))
    with pytest.raises(ValueError, match=r"bad\.json: result 0 lacks"):
        load_results_json(bad, gt)


def test_shared_evaluator_is_official_cocoeval(tmp_path):
    cfg = tiny_cfg(tmp_path, "DATASETS.TEST", f'("{VAL}",)')
    evaluator = build_evaluator(cfg, VAL, str(tmp_path))
    assert evaluator._use_fast_impl is False
    assert evaluator._max_dets_per_image == [1, 10, cfg.TEST.EVAL.MAX_DETS_PER_IMAGE]
    assert type(Trainer.build_evaluator(cfg, VAL, str(tmp_path))) is type(evaluator)
