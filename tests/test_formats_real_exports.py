"""Files laid out exactly as LabelMe, labelme2voc / PASCAL VOC, CVAT and YOLO tools write them."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers.dataset_builders import annotation_mask, unique_name
from PIL import Image

import d2_maskext  # noqa: F401  (registers formats)
from d2_maskext.config import add_maskext_config
from d2_maskext.data import DatasetError, register_dataset, scan_dataset
from d2_maskext.data.registration import register_declared_datasets

H, W = 40, 60


def write_image(path: Path, height: int = H, width: int = W) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 120, np.uint8))
    return path


def load(name: str, **kwargs) -> tuple[list[dict], list[str]]:
    register_dataset(name, **kwargs)
    return DatasetCatalog.get(name), MetadataCatalog.get(name).thing_classes


def instances(records: list[dict]) -> list[dict]:
    return [a for r in records for a in r["annotations"] if not a["iscrowd"]]


# ------------------------------------------------------------------------------------------------ LabelMe
def png_base64(mask: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(bool)).save(buffer, format="PNG")  # LabelMe stores a 1-bit PNG
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def labelme_shape(label: str, points: list, shape_type: str, group_id: int | None = None, mask: str | None = None) -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": group_id,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        "mask": mask,
    }


def write_labelme_export(root: Path, shapes: list[dict]) -> Path:
    """A LabelMe 5.x file: the image one folder up, referenced with a Windows path, no embedded image data."""
    write_image(root / "images" / "scene.png")
    document = {
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": "..\\images\\scene.png",
        "imageData": None,
        "imageHeight": H,
        "imageWidth": W,
    }
    (root / "json").mkdir(parents=True, exist_ok=True)
    (root / "json" / "scene.json").write_text(json.dumps(document, indent=2))
    (root / "labels.txt").write_text("__ignore__\n_background_\ncat\ndog\n")
    return root


def test_labelme_export_with_labels_txt_groups_masks_ignore_and_lines(tmp_path):
    cat_mask = np.zeros((6, 9), bool)  # box (30, 20)-(38, 25) inclusive: 9x6
    cat_mask[1:5, 2:8] = True
    shapes = [
        labelme_shape("dog", [[2, 2], [10, 2], [10, 10], [2, 10]], "polygon", group_id=1),
        labelme_shape("dog", [[12, 2], [16, 6]], "rectangle", group_id=1),  # same group: one dog
        labelme_shape("cat", [[30, 20], [38, 25]], "mask", mask=png_base64(cat_mask)),
        labelme_shape("__ignore__", [[40, 0], [59, 0], [59, 10], [40, 10]], "polygon"),
        labelme_shape("cat", [[5, 30]], "point"),
        labelme_shape("cat", [[5, 30], [20, 35]], "line"),
        labelme_shape("cat", [[5, 30], [20, 35], [25, 38]], "linestrip"),
    ]
    root = write_labelme_export(tmp_path, shapes)
    name = unique_name("labelme_export")
    records, classes = load(
        name, format="labelme", image_root=root, annotations=root / "json", thing_classes=root / "labels.txt"
    )

    assert classes == ["cat", "dog"]  # __ignore__ and _background_ are not classes
    (record,) = records
    assert record["file_name"] == str(root / "images" / "scene.png")
    things = instances(records)
    assert sorted(a["category_id"] for a in things) == [0, 1]
    dog = next(a for a in things if a["category_id"] == 1)
    assert len(dog["segmentation"]) == 2  # the polygon and the rectangle of group 1
    cat = next(a for a in things if a["category_id"] == 0)
    expected = np.zeros((H, W), bool)
    expected[20:26, 30:39] = cat_mask
    assert np.array_equal(annotation_mask(cat, H, W), expected)  # pasted at the box, exactly
    ignore = [a for a in record["annotations"] if a["iscrowd"]]
    assert sorted(a["category_id"] for a in ignore) == [0, 1]  # ignores predictions of every class

    report = scan_dataset(name, read_images=False)
    assert report.problems.counts["unsupported_shape"] == 3
    assert report.class_counts["cat"] >= 1


@pytest.mark.parametrize(
    ("mask", "points", "kind", "message"),
    [
        ("not base64!", [[0, 0], [3, 3]], "malformed", "'mask' is not base64"),
        (base64.b64encode(b"not a png").decode(), [[0, 0], [3, 3]], "malformed", "'mask' is not a PNG mask"),
        (png_base64(np.ones((4, 4), bool)), [[0, 0], [5, 5]], "size_mismatch", "mask PNG is 4x4 but its box"),
    ],
)
def test_labelme_bad_mask_shapes_name_file_shape_and_problem(tmp_path, mask, points, kind, message):
    root = write_labelme_export(tmp_path, [labelme_shape("cat", points, "mask", mask=mask)])
    name = unique_name("labelme_bad_mask")
    register_dataset(name, "labelme", root, root / "json", thing_classes=root / "labels.txt")
    report = scan_dataset(name, read_images=False)
    (problem,) = report.problems.examples[kind]
    assert problem.file.endswith("scene.json") and problem.where == "shapes[0] ('cat')"
    assert message in problem.detail


# ------------------------------------------------------------------------------------------- VOC instances
def palette_png(path: Path, indices: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    image.save(path)


def test_voc_instances_classes_void_and_missing_class_png(tmp_path):
    root = tmp_path / "VOC"
    write_image(root / "JPEGImages" / "2007_000001.jpg")
    write_image(root / "JPEGImages" / "2007_000002.jpg")
    objects = np.zeros((H, W), np.uint8)
    classes = np.zeros((H, W), np.uint8)
    objects[2:10, 2:12], classes[2:10, 2:12] = 1, 2  # instance 1: class 2 (dog)
    objects[15:30, 20:40], classes[15:30, 20:40] = 2, 1  # instance 2: class 1 (cat)
    objects[1, :], classes[1, :] = 255, 255  # void band
    palette_png(root / "SegmentationObject" / "2007_000001.png", objects)
    palette_png(root / "SegmentationClass" / "2007_000001.png", classes)
    (root / "class_names.txt").write_text("_background_\ncat\ndog\n")
    name = unique_name("voc")
    records, thing_classes = load(
        name, format="voc_instances", image_root=root / "JPEGImages", annotations=root,
        thing_classes=root / "class_names.txt",
    )  # fmt: skip
    assert thing_classes == ["cat", "dog"]
    (record,) = records  # the image without instance PNGs is not a segmentation sample
    by_class = {a["category_id"]: annotation_mask(a, H, W) for a in instances(records)}
    assert np.array_equal(by_class[1], objects == 1) and np.array_equal(by_class[0], objects == 2)
    void = [a for a in record["annotations"] if a["iscrowd"]]
    assert len(void) == 2 and np.array_equal(annotation_mask(void[0], H, W), objects == 255)

    palette_png(root / "SegmentationObject" / "2007_000002.png", objects)
    name = unique_name("voc_missing_class")
    register_dataset(name, "voc_instances", root / "JPEGImages", root, thing_classes=root / "class_names.txt")
    with pytest.raises(DatasetError, match=r"2007_000002\.png: no class PNG"):
        DatasetCatalog.get(name)


# --------------------------------------------------------------------------------------------- CVAT COCO
def write_cvat_coco(root: Path, crowd_count: int, total: int) -> Path:
    write_image(root / "images" / "frame_000000.png")
    annotations = []
    for k in range(total):
        mask = np.zeros((H, W), np.uint8)
        mask[2 + 3 * k : 4 + 3 * k, 5:25] = 1
        counts = mask_util.encode(np.asfortranarray(mask))
        uncompressed = {"size": [H, W], "counts": _uncompressed_counts(mask)}
        annotations.append({
            "id": k + 1, "image_id": 1, "category_id": 1, "segmentation": uncompressed,
            "area": float(mask.sum()), "bbox": [float(v) for v in mask_util.toBbox(counts)],
            "iscrowd": int(k < crowd_count), "attributes": {"occluded": False},
        })  # fmt: skip
    data = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""},
        "categories": [{"id": 1, "name": "car", "supercategory": ""}],
        "images": [{"id": 1, "width": W, "height": H, "file_name": "frame_000000.png", "license": 0}],
        "annotations": annotations,
    }
    path = root / "annotations" / "instances_default.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return counts if flat[0] == 0 else [0, *counts]


def test_cvat_coco_export_warns_when_most_instances_are_crowd(tmp_path, caplog):
    path = write_cvat_coco(tmp_path, crowd_count=3, total=4)
    name = unique_name("cvat")
    with caplog.at_level(logging.WARNING, logger="d2_maskext"):
        records, _ = load(name, format="coco", image_root=tmp_path / "images", annotations=path)
    assert "3 of 4 instances are iscrowd 1" in caplog.text and "crowd_as_instances: true" in caplog.text
    assert len(instances(records)) == 1

    cfg = add_maskext_config(get_cfg())
    name = unique_name("cvat_as_instances")
    cfg.DATASETS.REGISTER = [
        {"name": name, "format": "coco", "image_root": str(tmp_path / "images"), "annotations": str(path),
         "crowd_as_instances": True}
    ]  # fmt: skip
    register_declared_datasets(cfg)
    assert len(instances(DatasetCatalog.get(name))) == 4
    assert not hasattr(MetadataCatalog.get(name), "json_file")  # evaluation sees them as instances too


def test_a_few_crowd_regions_do_not_warn(tmp_path, caplog):
    path = write_cvat_coco(tmp_path, crowd_count=1, total=4)
    with caplog.at_level(logging.WARNING, logger="d2_maskext"):
        load(unique_name("coco_crowd"), format="coco", image_root=tmp_path / "images", annotations=path)
    assert "iscrowd" not in caplog.text


# ---------------------------------------------------------------------------------- semantic -> instances
def test_per_class_masks_split_into_instances_by_connected_components(tmp_path):
    write_image(tmp_path / "images" / "field.png")
    semantic = np.zeros((H, W), np.uint8)
    semantic[2:12, 2:12] = 255  # 100 px
    semantic[20:30, 30:45] = 255  # 150 px
    semantic[35, 55] = 255  # 1 px speck
    (tmp_path / "masks" / "field" / "tree").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "masks" / "field" / "tree" / "all.png"), semantic)
    name = unique_name("semantic")
    records, classes = load(
        name, format="binary_masks", image_root=tmp_path / "images", annotations=tmp_path / "masks",
        split_components=True, min_component_area=5,
    )  # fmt: skip
    assert classes == ["tree"]
    areas = sorted(int(annotation_mask(a, H, W).sum()) for a in instances(records))
    assert areas == [100, 150]
    report = scan_dataset(name, read_images=False)
    (problem,) = report.problems.examples["small_component"]
    assert problem.where == "component at x 55, y 35" and "1 px < min_component_area 5" in problem.detail


# ----------------------------------------------------------------------------------------------------- YOLO
def test_yolo_detection_lines_are_box_only_and_data_yaml_resolves_splits(tmp_path):
    for split in ("train", "val"):
        write_image(tmp_path / "images" / split / f"{split}_0.jpg")
        (tmp_path / "labels" / split).mkdir(parents=True)
    (tmp_path / "labels" / "train" / "train_0.txt").write_text(
        "0 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n1 0.5 0.5 0.2 0.2\n"
    )
    (tmp_path / "labels" / "val" / "val_0.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: car\n  1: person\n")

    cfg = add_maskext_config(get_cfg())
    train, val = unique_name("yolo_train"), unique_name("yolo_val")
    cfg.DATASETS.REGISTER = [
        {"name": train, "format": "yolo", "annotations": str(tmp_path / "data.yaml"), "split": "train"},
        {"name": val, "format": "yolo", "annotations": str(tmp_path / "data.yaml"), "split": "val"},
    ]
    register_declared_datasets(cfg)
    assert MetadataCatalog.get(val).image_root == str(tmp_path / "images" / "val")
    (record,) = DatasetCatalog.get(train)
    assert [a["category_id"] for a in record["annotations"]] == [0]  # the detection line is not a polygon
    assert MetadataCatalog.get(train).thing_classes == ["car", "person"]
    report = scan_dataset(train, read_images=False)
    (problem,) = report.problems.examples["missing_segmentation"]
    assert problem.where == "line 2" and "a box without a polygon" in problem.detail
    (record,) = DatasetCatalog.get(val)  # detection-only split: the box is kept
    (box,) = record["annotations"]
    assert box["bbox"] == pytest.approx([24.0, 12.0, 36.0, 28.0]) and "segmentation" not in box

    with pytest.raises(DatasetError, match=r"data\.yaml: split 'test' is not one of its image folders"):
        register_dataset(unique_name("yolo_test"), "yolo", None, tmp_path / "data.yaml", split="test")
