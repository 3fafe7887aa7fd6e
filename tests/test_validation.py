"""Dataset scanner, the validate_dataset tool, start-up checks and the decompression-bomb limit."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from helpers.dataset_builders import (
    mask_scenes,
    polygon_scenes,
    unique_name,
    write_binary_masks,
    write_coco,
    write_yolo,
)
from PIL import Image

import d2_maskext  # noqa: F401  (registers formats and mappers)
from d2_maskext.config import add_maskext_config
from d2_maskext.data import DatasetError, prepare_datasets, register_dataset, scan_dataset
from d2_maskext.data.formats import ImageReadError, read_image

ROOT = Path(__file__).resolve().parents[1]


def _broken_coco(tmp_path: Path) -> Path:
    """A COCO dataset with one instance of (almost) every problem kind."""
    path = write_coco(tmp_path, mask_scenes(), {"cat": 1, "dog": 2})
    data = json.loads(path.read_text())
    png = (tmp_path / "images" / "img_a.png").read_bytes()
    (tmp_path / "images" / "img_a.png").write_bytes(png[: len(png) // 2])  # truncated: header fine, pixels not
    data["images"][1]["height"] = 41  # img_b is 40 high
    data["images"].append({"id": 99, "file_name": "gone.png", "height": 40, "width": 56})
    anns = data["annotations"]
    anns[0]["segmentation"] = [[1, 1, 8, 1]]
    anns[1]["segmentation"][0][:2] = [70, -3]
    anns[2]["bbox"][3] = 0
    anns.append({**anns[1], "id": 50, "category_id": 12})
    anns.append({**anns[1], "id": 1})
    path.write_text(json.dumps(data))
    return path


def test_scanner_reports_counts_and_first_examples(tmp_path):
    path = _broken_coco(tmp_path)
    name = unique_name("scan")
    register_dataset(name, "coco", tmp_path / "images", path)
    report = scan_dataset(name)
    counts = dict(report.problems.counts)
    assert counts == {
        "unreadable_image": 1,
        "size_mismatch": 1,
        "missing_image": 1,
        "degenerate_polygon": 1,
        "polygon_outside_image": 1,
        "zero_area_box": 1,
        "unknown_category": 1,
        "duplicate_id": 1,
        "no_annotations": 1,
    }
    assert not report.ok
    text = report.format()
    assert f"{tmp_path / 'images' / 'img_a.png'}, record #0: cannot decode image" in text
    assert "image is 56x40, annotations say 56x41" in text
    assert f"{path}, images[3] (id 99): " in text and "gone.png does not exist" in text
    assert f"{path}, annotations[4] (id 50): category_id 12 is not in 'categories'" in text
    assert f"{path}, annotations[5] (id 1): annotation id 1 is used twice" in text
    assert "problems: 5 fatal, 2 dropped, 2 kept" in text
    with pytest.raises(DatasetError):  # registration itself stops on the fatal ones
        DatasetCatalog.get(name)


def test_scanner_checks_datasets_registered_by_other_code(tmp_path):
    scenes = polygon_scenes()
    image = tmp_path / "a.png"
    Image.fromarray(scenes[0].image).save(image)
    box = {"bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
    records = [
        {"file_name": str(image), "image_id": 1, "height": 40, "width": 56, "annotations": [
            {**box, "bbox": [1, 1, 9, 9], "segmentation": [[1, 1, 9, 1, 9, 9]]},
            {**box, "bbox": [1, 1, 1, 9], "segmentation": [[1, 1, 9, 1]]},
            {**box, "bbox": [1, 1, 9, 9], "category_id": 3},
        ]},
        {"file_name": str(tmp_path / "b.png"), "image_id": 1, "height": 40, "width": 56, "annotations": []},
    ]  # fmt: skip
    name = unique_name("foreign")
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).thing_classes = ["a", "b"]
    report = scan_dataset(name)
    assert dict(report.problems.counts) == {
        "zero_area_box": 1,
        "degenerate_polygon": 1,
        "unknown_category": 1,
        "duplicate_id": 1,
        "no_annotations": 1,
        "missing_image": 1,
    }
    assert report.class_counts == {"a": 2, "b": 0}


def _tool():
    spec = importlib.util.spec_from_file_location("validate_dataset", ROOT / "tools" / "validate_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_validate_dataset_tool(tmp_path, capsys):
    tool = _tool()
    path = _broken_coco(tmp_path / "bad")
    assert tool.main(["--format", "coco", "--image-root", str(tmp_path / "bad" / "images"), "--annotations", str(path)]) == 1
    out = capsys.readouterr().out
    assert "unreadable_image (fatal) x1" in out and "fatal problems in: validate:" in out

    images, labels, names = write_yolo(tmp_path / "good", polygon_scenes(), ["dog", "cat"])
    args = ["--format", "yolo", "--image-root", str(images), "--annotations", str(labels), "--thing-classes", "dog,cat"]
    assert tool.main(args) == 0
    out = capsys.readouterr().out
    assert "2 images, 3 instances" in out and "dog 2, cat 1" in out and "no fatal problems" in out

    name = unique_name("cfgscan")
    config = tmp_path / "scan.yaml"
    config.write_text(
        "DATASETS:\n"
        f"  REGISTER: [{{name: {name}, format: yolo, image_root: {images}, annotations: {labels}, thing_classes: {names}}}]\n"
        f"  TRAIN: ('{name}',)\n  TEST: ()\n"
    )
    assert tool.main(["--config-file", str(config), "--no-images"]) == 0
    assert f"dataset '{name}': 2 images" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ start-up checks
def _cfg(**overrides):
    cfg = add_maskext_config(get_cfg())
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("maskext_synth_tiny_train",), ()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    cfg.MODEL.MASK_ON = True
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[leaf] = value
    return cfg


@pytest.mark.parametrize("key", ["TRAIN", "TEST"])
def test_bare_string_dataset_name_is_caught(key):
    cfg = _cfg(**{f"DATASETS.{key}": "maskext_synth_tiny_train"})
    with pytest.raises(ValueError, match=rf"DATASETS.{key} is the string 'maskext_synth_tiny_train'.*trailing comma"):
        prepare_datasets(cfg)


def test_unknown_dataset_name_suggests_close_ones():
    with pytest.raises(KeyError, match=r"'maskext_synth_tiny_trian' is not registered; did you mean \['maskext_synth_tiny_train'"):
        prepare_datasets(_cfg(**{"DATASETS.TRAIN": ("maskext_synth_tiny_trian",)}))


@pytest.mark.parametrize("meta_architecture", ["GeneralizedRCNN", "MaskExtRCNN"])
def test_num_classes_mismatch_is_caught_at_start_up(tmp_path, meta_architecture):
    images, masks = write_binary_masks(tmp_path, mask_scenes())
    name = unique_name("classes")
    cfg = _cfg(**{"DATASETS.TRAIN": (name,), "INPUT.MASK_FORMAT": "bitmask",
                  "MODEL.META_ARCHITECTURE": meta_architecture})
    cfg.DATASETS.REGISTER = [{"name": name, "format": "binary_masks", "image_root": str(images), "annotations": str(masks)}]
    with pytest.raises(ValueError, match=rf"NUM_CLASSES is 5 but dataset '{name}' has 2 classes \['cat', 'dog'\]; set MODEL.ROI_HEADS.NUM_CLASSES 2"):
        prepare_datasets(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.INPUT.MASK_FORMAT = "polygon"
    with pytest.raises(ValueError, match=r"has RLE masks .*img_a.png.* set INPUT.MASK_FORMAT \"bitmask\""):
        prepare_datasets(cfg)
    cfg.INPUT.MAPPER.NAME = "LSJDatasetMapper"  # rasterizes every mask itself: no mask-format constraint
    prepare_datasets(cfg)


def test_polygon_mask_format_with_the_synthetic_dataset_is_caught_at_start_up():
    """A COCO config (polygon masks) on the built-in synthetic data, whose masks are RLE."""
    with pytest.raises(ValueError, match=r"'maskext_synth_tiny_train' is a built-in synthetic dataset, whose masks are RLE"):
        prepare_datasets(_cfg(**{"INPUT.MASK_FORMAT": "polygon"}))
    prepare_datasets(_cfg(**{"INPUT.MASK_FORMAT": "bitmask"}))


# ---------------------------------------------------------------------------------------- decompression bombs
def test_decompression_bomb_refused_everywhere(tmp_path, monkeypatch):
    images, labels, names = write_yolo(tmp_path, polygon_scenes(), ["dog", "cat"])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the images are 56x40 = 2240 pixels
    with pytest.raises(ImageReadError, match=r"img_a.png: refused as a possible decompression bomb .*MAX_IMAGE_PIXELS is 1000"):
        read_image(images / "img_a.png", "BGR")
    name = unique_name("bomb")
    register_dataset(name, "yolo", images, labels, thing_classes=names)
    with pytest.raises(DatasetError, match=r"unreadable_image \(fatal\) x2[\s\S]*img_a.png: refused as a possible decompression bomb"):
        DatasetCatalog.get(name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # between the limit and twice the limit: still refused
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(images / "img_a.png", "BGR")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    assert read_image(images / "img_a.png", "BGR").shape == (40, 56, 3)
    assert np.array_equal(read_image(images / "img_a.png", "BGR"), polygon_scenes()[0].image)
