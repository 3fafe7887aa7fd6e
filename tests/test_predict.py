"""tools/predict.py: overlays per image, COCO results pycocotools accepts, videos, batching, ground-truth ids,
demo.py's flags, YAML and lazy configs, and no training data needed.

A randomly initialised tiny model is enough here (score threshold 0 keeps its detections); the report
tests cover a trained one.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers.train_net_runner import REPO, TINY_CONFIG, load_script, tiny_cfg
from PIL import Image
from pycocotools.coco import COCO

from d2_maskext.predict import BatchPredictor, predict

TINY_LAZY_CONFIG = REPO / "configs" / "lazy" / "synthetic" / "mask_rcnn_R18_FPN_GN_demo.py"

VAL = "maskext_synth_tiny_val"
PREDICT_OPTS = (
    "DATASETS.TEST",
    f'("{VAL}",)',
    "TEST.DETECTIONS_PER_IMAGE",
    "5",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "50",
)


@pytest.fixture(scope="module")
def weights(tiny_random_weights: Path) -> Path:
    return tiny_random_weights


@pytest.fixture(scope="module")
def cfg(weights, tmp_path_factory) -> CfgNode:
    opts = (*PREDICT_OPTS, "MODEL.WEIGHTS", str(weights), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    cfg = tiny_cfg(tmp_path_factory.mktemp("predict_out"), *opts)
    cfg.freeze()
    return cfg


@pytest.fixture(scope="module")
def predictor(cfg) -> BatchPredictor:
    return BatchPredictor.from_cfg(cfg)


@pytest.fixture(scope="module")
def metadata():
    return MetadataCatalog.get(VAL)


def _image(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), rng.integers(40, 200, size=3), np.uint8)
    cv2.circle(
        image, (int(rng.integers(30, 90)), 48), 20, tuple(int(c) for c in rng.integers(0, 255, size=3)), -1
    )
    return image


def test_predict_folder_writes_one_overlay_per_image_and_loadable_results(weights, tmp_path, capsys):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    cv2.imwrite(str(images / "a.png"), _image(0))
    cv2.imwrite(str(images / "b.jpg"), _image(1))
    cv2.imwrite(str(images / "sub" / "c.png"), _image(2))
    (images / "broken.png").write_bytes(b"not an image")
    (images / "notes.txt").write_text("not an image either")
    out = tmp_path / "out"

    load_script("tools/predict.py").main(
        ["--config-file", str(TINY_CONFIG), "--input", str(images), "--output", str(out), "--device", "cpu",
         "--score-threshold", "0.0", "--batch-size", "2", *PREDICT_OPTS, "MODEL.WEIGHTS", str(weights)]
    )  # fmt: skip

    assert "3 images (1 skipped)" in capsys.readouterr().out
    overlays = sorted(p.relative_to(out / "overlays").as_posix() for p in (out / "overlays").rglob("*.png"))
    assert overlays == ["a.png", "b.png", "sub/c.png"]
    for name in overlays:
        assert cv2.imread(str(out / "overlays" / name)).shape == (96, 128, 3)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "images.json"))
        results = coco.loadRes(str(out / "predictions.json"))
    assert sorted(img["file_name"] for img in coco.dataset["images"]) == ["a.png", "b.jpg", "sub/c.png"]
    assert [c["name"] for c in coco.dataset["categories"]] == MetadataCatalog.get(VAL).thing_classes
    anns = results.dataset["annotations"]
    assert 0 < len(anns) <= 3 * 5
    for ann in anns:
        assert set(ann["segmentation"]) == {"size", "counts"} and ann["segmentation"]["size"] == [96, 128]
        assert ann["category_id"] in coco.cats and 0.0 <= ann["score"] <= 1.0


def test_predict_skips_a_decompression_bomb(predictor, metadata, tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), _image(0))
    cv2.imwrite(str(images / "huge.png"), np.zeros((200, 200, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # a.png has 12288 pixels, huge.png 40000

    summary = predict(predictor, metadata, images, tmp_path / "out")

    assert (summary.num_images, summary.num_skipped) == (1, 1)


def test_predict_video_writes_overlay_video_and_one_image_per_frame(predictor, metadata, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (128, 96))
    for seed in range(3):
        writer.write(_image(seed))
    writer.release()

    summary = predict(predictor, metadata, video, tmp_path / "out", batch_size=2)

    assert summary.num_images == 3 and summary.num_skipped == 0
    images = json.loads(summary.images_json.read_text())["images"]
    assert [img["file_name"] for img in images] == ["clip.avi#000000", "clip.avi#000001", "clip.avi#000002"]
    capture = cv2.VideoCapture(str(summary.overlays / "clip.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 3


def test_batched_prediction_equals_one_image_at_a_time(predictor):
    images = [_image(3), _image(4)]
    batched = predictor.predict_batch(images)
    for image, output in zip(images, batched):
        single = predictor(image)["instances"]
        torch.testing.assert_close(
            output["instances"].pred_boxes.tensor, single.pred_boxes.tensor, atol=1e-3, rtol=1e-4
        )
        torch.testing.assert_close(output["instances"].scores, single.scores, atol=1e-4, rtol=1e-4)


def test_gt_json_gives_ground_truth_image_and_category_ids(predictor, metadata, tmp_path):
    DatasetCatalog.get(VAL)
    gt = json.loads(Path(metadata.json_file).read_text())
    folder = tmp_path / "val"
    folder.mkdir()
    for img in gt["images"][2:4]:
        shutil.copy(Path(metadata.image_root) / img["file_name"], folder / img["file_name"])

    summary = predict(predictor, metadata, folder, tmp_path / "out", batch_size=2, gt_json=metadata.json_file)

    images = json.loads(summary.images_json.read_text())["images"]
    assert [img["id"] for img in images] == [img["id"] for img in gt["images"][2:4]]
    results = json.loads(summary.predictions_json.read_text())
    assert {r["category_id"] for r in results} <= {c["id"] for c in gt["categories"]}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", "no such image, folder or video"),
        ("notes.txt", "unknown file type"),
        ("empty", "no images"),
    ],
)
def test_bad_inputs_are_named(predictor, metadata, tmp_path, name, message):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        predict(predictor, metadata, tmp_path / name, tmp_path / "out")


def test_inputs_are_files_folders_and_globs_and_clashing_names_are_refused(predictor, metadata, tmp_path):
    (tmp_path / "shots").mkdir()
    for name, seed in (("a.png", 0), ("shots/b.jpg", 1), ("shots/c.jpg", 2), ("shots/a.jpg", 3)):
        cv2.imwrite(str(tmp_path / name), _image(seed))

    summary = predict(predictor, metadata, [tmp_path / "a.png", str(tmp_path / "shots" / "[bc].jpg")], tmp_path / "o")

    names = [img["file_name"] for img in json.loads(summary.images_json.read_text())["images"]]
    assert names == ["a.png", "b.jpg", "c.jpg"]
    with pytest.raises(ValueError, match=r"would both write overlays/a\.png"):
        predict(predictor, metadata, [tmp_path / "a.png", tmp_path / "shots"], tmp_path / "o")
    with pytest.raises(ValueError, match="matches no image"):
        predict(predictor, metadata, [str(tmp_path / "*.gif")], tmp_path / "o")


@pytest.mark.parametrize("lazy", [False, True], ids=["yaml", "lazy"])
def test_demo_flags_without_the_training_data_on_disk(weights, tmp_path, capsys, lazy):
    """demo.py's --input/--video-input/--confidence-threshold/--opts, with a training dataset that does not exist."""
    cv2.imwrite(str(tmp_path / "a.png"), _image(0))
    cv2.imwrite(str(tmp_path / "b.png"), _image(1))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (128, 96))
    writer.write(_image(2))
    writer.release()
    missing = tmp_path / "missing"
    if lazy:
        config = TINY_LAZY_CONFIG
        opts = [f"train.init_checkpoint={weights}", "dataloader.train.dataset.names=not_on_disk_train",
                f"dataloader.test.dataset.names={VAL}", "model.backbone.out_channels=32",
                "model.proposal_generator.head.in_channels=32"]  # fmt: skip
        opts += _lazy_tiny_head_opts()
    else:
        config = TINY_CONFIG
        opts = ["MODEL.WEIGHTS", str(weights), "DATASETS.TEST", f'("{VAL}",)', "DATASETS.TRAIN", '("not_on_disk_train",)',
                "DATASETS.REGISTER", f"[{{'name': 'not_on_disk_train', 'format': 'coco', 'image_root': '{missing}', "
                f"'annotations': '{missing / 'train.json'}'}}]"]  # fmt: skip
    tool = load_script("tools/predict.py")
    images_out, video_out = tmp_path / "images_out", tmp_path / "video_out"

    tool.main(["--config-file", str(config), "--input", str(tmp_path / "*.png"), "--output", str(images_out),
               "--confidence-threshold", "0.0", "--opts", *opts])  # fmt: skip
    assert "2 images (0 skipped)" in capsys.readouterr().out
    tool.main(["--config-file", str(config), "--video-input", str(video), "--output", str(video_out),
               "--confidence-threshold", "1.0", "--opts", *opts])  # fmt: skip

    assert "1 images (0 skipped), 0 instances" in capsys.readouterr().out
    assert (video_out / "overlays" / "clip.mp4").is_file()
    categories = json.loads((images_out / "images.json").read_text())["categories"]
    assert [c["name"] for c in categories] == MetadataCatalog.get(VAL).thing_classes
    assert not missing.exists()


def _lazy_tiny_head_opts() -> list[str]:
    """The lazy demo narrowed to the tiny YAML model's heads, so the tiny weights load into it."""
    heads = "model.roi_heads"
    return [
        f"{heads}.box_head.input_shape.channels=32", f"{heads}.box_head.fc_dims=[64,64]",
        f"{heads}.box_predictor.input_shape.channels=64", f"{heads}.mask_head.input_shape.channels=32",
        f"{heads}.mask_head.conv_dims=[32,32,32]", f"{heads}.box_predictor.test_topk_per_image=5",
        "dataloader.test.mapper.augmentations.0.short_edge_length=128",
        "dataloader.test.mapper.augmentations.0.max_size=128",
    ]  # fmt: skip
