"""Dataset formats: every format round-trips pixel-exactly; every bad input gives its documented error."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import polygons_to_bitmask
from helpers.dataset_builders import (
    Scene,
    annotation_mask,
    box_xyxy,
    loaded_instances,
    mask_scenes,
    polygon_scenes,
    rectilinear,
    source_instances,
    unique_name,
    write_binary_masks,
    write_coco,
    write_instance_id_png,
    write_labelme,
    write_yolo,
)

import d2_maskext  # noqa: F401  (registers formats and mappers)
from d2_maskext.config import add_maskext_config
from d2_maskext.data import DatasetError, prepare_datasets, register_dataset
from d2_maskext.data.formats.labelme import circle_polygon


def load(name: str, **kwargs) -> tuple[list[dict], list[str]]:
    register_dataset(name, **kwargs)
    records = DatasetCatalog.get(name)
    return records, MetadataCatalog.get(name).thing_classes


# ------------------------------------------------------------------------------------------- round trips
def test_coco_round_trip_polygons_rle_uncompressed_rle_and_crowd(tmp_path):
    scenes = mask_scenes()
    h, w = scenes[0].size
    crowd = rectilinear("dog", h, w, [(40, 20), (55, 20), (55, 39), (40, 39)])
    path = write_coco(tmp_path, scenes, {"cat": 7, "dog": 3}, uncompressed_crowd=crowd)
    name = unique_name("coco")
    records, classes = load(name, format="coco", image_root=tmp_path / "images", annotations=path)

    assert classes == ["dog", "cat"]  # contiguous ids follow the sorted dataset ids, as in Detectron2
    assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert MetadataCatalog.get(name).json_file == str(path)
    assert [r["image_id"] for r in records] == [10, 11, 12]
    first = records[0]["annotations"]
    crowd_annotations = [a for a in first if a["iscrowd"]]
    assert len(crowd_annotations) == 1 and isinstance(crowd_annotations[0]["segmentation"]["counts"], str)
    assert np.array_equal(annotation_mask(crowd_annotations[0], h, w), crowd.mask)
    for record in records:
        record["annotations"] = [a for a in record["annotations"] if not a["iscrowd"]]
    assert loaded_instances(records, classes) == source_instances(scenes)
    kinds = {type(a["segmentation"]).__name__ for r in records for a in r["annotations"]}
    assert kinds == {"list", "dict"}  # polygons and RLE both exercised


@pytest.mark.parametrize("shape_type", ["polygon", "rectangle"])
def test_labelme_round_trip(tmp_path, shape_type):
    scenes = polygon_scenes()
    if shape_type == "rectangle":
        for scene in scenes:  # rectangles only: drop the L-shape
            scene.instances = [i for i in scene.instances if len(i.polygon) == 8]
    write_labelme(tmp_path, scenes, shape_type)
    records, classes = load(unique_name("labelme"), format="labelme", image_root=tmp_path, annotations=tmp_path)
    assert classes == sorted({i.label for s in scenes for i in s.instances})
    assert loaded_instances(records, classes) == source_instances(scenes)


def test_labelme_circles_and_groups(tmp_path):
    scene = Scene("circles", np.zeros((50, 60, 3), np.uint8))
    h, w = scene.size
    left = rectilinear("blob", h, w, [(2, 2), (10, 2), (10, 10), (2, 10)])
    right = rectilinear("blob", h, w, [(50, 40), (58, 40), (58, 48), (50, 48)])
    shapes = [
        {"label": "coin", "points": [[30, 25], [30, 37]], "shape_type": "circle", "group_id": None},
        {"label": "blob", "points": np.reshape(left.polygon, (-1, 2)).tolist(), "shape_type": "polygon", "group_id": 4},
        {"label": "blob", "points": np.reshape(right.polygon, (-1, 2)).tolist(), "shape_type": "polygon", "group_id": 4},
    ]
    write_labelme(tmp_path, [scene])
    (tmp_path / "circles.json").write_text(
        json.dumps({"imagePath": "circles.png", "imageHeight": h, "imageWidth": w, "shapes": shapes})
    )
    records, classes = load(unique_name("labelme"), format="labelme", image_root=tmp_path, annotations=tmp_path)
    coin, blob = sorted(records[0]["annotations"], key=lambda a: classes[a["category_id"]] != "coin")
    # The circle is LabelMe's own polygon (radius 12 -> its vertex count), and close to the ideal disc.
    assert np.array_equal(annotation_mask(coin, h, w), polygons_to_bitmask([np.array(circle_polygon([30, 25], [30, 37]))], h, w))
    yy, xx = np.mgrid[:h, :w]
    disc = np.hypot(xx + 0.5 - 30, yy + 0.5 - 25) <= 12
    iou = (annotation_mask(coin, h, w) & disc).sum() / (annotation_mask(coin, h, w) | disc).sum()
    assert iou > 0.95
    # Shapes sharing label and group_id are one instance with two polygons and a box around both.
    assert len(blob["segmentation"]) == 2
    assert np.array_equal(annotation_mask(blob, h, w), left.mask | right.mask)
    assert box_xyxy(blob) == [2.0, 2.0, 58.0, 48.0]


def test_binary_masks_round_trip(tmp_path):
    scenes = mask_scenes()
    images, masks = write_binary_masks(tmp_path, scenes)
    records, classes = load(unique_name("binmask"), format="binary_masks", image_root=images, annotations=masks)
    assert classes == ["cat", "dog"]
    assert loaded_instances(records, classes) == source_instances(scenes)
    assert all(isinstance(a["segmentation"], dict) for r in records for a in r["annotations"])


def test_instance_id_png_round_trip_16_bit(tmp_path):
    scenes = mask_scenes()
    images, ids, class_map = write_instance_id_png(tmp_path, scenes)
    records, classes = load(
        unique_name("idpng"), format="instance_id_png", image_root=images, annotations=ids,
        class_map=class_map, thing_classes=["dog", "cat", "bird"],
    )  # fmt: skip
    assert classes == ["dog", "cat", "bird"]
    assert loaded_instances(records, classes) == source_instances(scenes)


@pytest.mark.parametrize("names_as", ["txt", "yaml", "list"])
def test_yolo_round_trip(tmp_path, names_as):
    scenes = polygon_scenes()
    names = ["dog", "cat"]
    images, labels, names_file = write_yolo(tmp_path, scenes, names)
    if names_as == "yaml":
        names_file = tmp_path / "data.yaml"
        names_file.write_text("path: .\nnames:\n  0: dog\n  1: cat\n")
    thing_classes = names if names_as == "list" else names_file
    records, classes = load(unique_name("yolo"), format="yolo", image_root=images, annotations=labels, thing_classes=thing_classes)
    assert classes == names
    assert loaded_instances(records, classes) == source_instances(scenes)


# ------------------------------------------------------------------------------------------- bad inputs
def _coco_json(tmp_path: Path) -> tuple[Path, dict]:
    path = write_coco(tmp_path, polygon_scenes(), {"cat": 1, "dog": 2})
    return path, json.loads(path.read_text())


def _break_coco(kind: str, data: dict, tmp_path: Path) -> str:
    """Apply one defect to a COCO dict; return the location the error must name."""
    anns = data["annotations"]
    if kind == "unknown_category":
        anns[1]["category_id"] = 99
        return "annotations[1] (id 2)"
    if kind == "duplicate_id":
        anns[2]["id"] = anns[0]["id"]
        return "annotations[2] (id 1)"
    if kind == "missing_image":
        data["images"][1]["file_name"] = "nope.png"
        return "images[1] (id 11)"
    if kind == "path_outside_root":
        data["images"][0]["file_name"] = "../../etc/passwd"
        return "images[0] (id 10)"
    if kind == "size_mismatch":
        anns[0]["segmentation"] = {"size": [3, 3], "counts": "9"}
        return "annotations[0] (id 1)"
    if kind == "malformed":
        anns[1]["bbox"] = [1, 2, "wide", 4]
        return "annotations[1] (id 2)"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["unknown_category", "duplicate_id", "missing_image", "path_outside_root", "size_mismatch", "malformed"]
)
def test_coco_fatal_problems_name_file_index_and_problem(tmp_path, kind):
    path, data = _coco_json(tmp_path)
    where = _break_coco(kind, data, tmp_path)
    path.write_text(json.dumps(data))
    name = unique_name("badcoco")
    register_dataset(name, "coco", tmp_path / "images", path)
    with pytest.raises(DatasetError) as error:
        DatasetCatalog.get(name)
    message = str(error.value)
    assert str(path) in message and where in message and f"{kind} (fatal)" in message


def test_coco_unparseable_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    name = unique_name("badjson")
    register_dataset(name, "coco", tmp_path, path)
    with pytest.raises(DatasetError, match=r"malformed \(fatal\)[\s\S]*broken.json: cannot parse JSON"):
        DatasetCatalog.get(name)


def test_path_outside_root_allowed_by_config(tmp_path):
    path, data = _coco_json(tmp_path / "inside")
    shutil.copy(tmp_path / "inside" / "images" / "img_a.png", tmp_path / "elsewhere.png")
    data["images"][0]["file_name"] = "../../elsewhere.png"
    path.write_text(json.dumps(data))
    cfg = add_maskext_config(get_cfg())
    name = unique_name("outside")
    cfg.DATASETS.REGISTER = [{"name": name, "format": "coco", "image_root": str(tmp_path / "inside" / "images"), "annotations": str(path)}]
    cfg.DATASETS.ALLOW_PATHS_OUTSIDE_ROOT = True
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    prepare_datasets(cfg)
    assert DatasetCatalog.get(name)[0]["file_name"] == str(tmp_path / "elsewhere.png")


def test_dropped_entries_are_counted_and_logged(tmp_path, caplog):
    path, data = _coco_json(tmp_path)
    data["annotations"][0]["segmentation"] = [[1, 1, 5, 1]]  # 2 points: the only polygon, so the instance goes
    data["annotations"][1]["segmentation"].append([0, 0, 3, 3])  # an extra degenerate part: the instance stays
    data["annotations"][2]["bbox"] = [3, 3, 0, 5]
    data["annotations"][1]["segmentation"][0][0] = -4  # a point outside the image is reported, kept
    path.write_text(json.dumps(data))
    name = unique_name("dropped")
    register_dataset(name, "coco", tmp_path / "images", path)
    with caplog.at_level(logging.INFO, logger="d2_maskext"):
        records = DatasetCatalog.get(name)
    assert [len(r["annotations"]) for r in records] == [1, 0]
    log = caplog.text
    assert "degenerate_polygon (dropped) x2" in log and "annotations[0] (id 1): polygon #0 has 2 point(s)" in log
    assert "zero_area_box (dropped) x1" in log and "annotations[2] (id 3)" in log
    assert "polygon_outside_image (kept) x1" in log
    assert "no_annotations (kept) x1" in log and "img_b.png" in log


def test_labelme_problems(tmp_path, caplog):
    scenes = polygon_scenes()
    write_labelme(tmp_path, scenes)
    data = json.loads((tmp_path / "img_a.json").read_text())
    data["shapes"].append({"label": "cat", "points": [[1, 1], [9, 9]], "shape_type": "line"})
    (tmp_path / "img_a.json").write_text(json.dumps(data))
    name = unique_name("lm")
    register_dataset(name, "labelme", tmp_path, tmp_path, thing_classes=["cat"])
    with caplog.at_level(logging.WARNING, logger="d2_maskext"), pytest.raises(DatasetError) as error:
        DatasetCatalog.get(name)
    assert "unknown_category (fatal) x2" in str(error.value)
    assert f"{tmp_path / 'img_a.json'}, shapes[1] ('dog'): class 'dog' is not in ['cat']" in str(error.value)
    assert "unsupported_shape (dropped) x1" in caplog.text and "shapes[2]" in caplog.text

    data["imagePath"] = str(tmp_path.parent / "secret.png")  # absolute path outside the root
    (tmp_path / "img_a.json").write_text(json.dumps(data))
    name = unique_name("lm")
    register_dataset(name, "labelme", tmp_path, tmp_path)
    with pytest.raises(DatasetError, match=r"path_outside_root[\s\S]*img_a.json, imagePath: .*outside the dataset root"):
        DatasetCatalog.get(name)


def test_yolo_problems(tmp_path):
    images, labels, names_file = write_yolo(tmp_path, polygon_scenes(), ["dog", "cat"])
    with open(labels / "img_a.txt", "a") as f:
        f.write("5 0.1 0.1 0.2 0.1 0.2 0.2\n0 0.1 0.2 0.3\n")
    (labels / "ghost.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    name = unique_name("yolo")
    register_dataset(name, "yolo", images, labels, thing_classes=names_file)
    with pytest.raises(DatasetError) as error:
        DatasetCatalog.get(name)
    message = str(error.value)
    assert f"{labels / 'img_a.txt'}, line 3: class index 5 is not in 0..1" in message
    assert f"{labels / 'img_a.txt'}, line 4: polygon #0 is not an even-length list" in message
    assert f"{labels / 'ghost.txt'}: no image ghost.*" in message
    name = unique_name("yolo")
    register_dataset(name, "yolo", images, labels)
    with pytest.raises(DatasetError, match="YOLO labels carry class indices only"):
        DatasetCatalog.get(name)


def test_mask_png_problems(tmp_path):
    scenes = mask_scenes()
    images, masks = write_binary_masks(tmp_path / "bin", scenes)
    small = masks / "img_a" / "cat" / "0.png"
    cv2.imwrite(str(small), np.ones((5, 5), np.uint8))
    name = unique_name("bin")
    register_dataset(name, "binary_masks", images, masks)
    with pytest.raises(DatasetError, match=rf"size_mismatch[\s\S]*{small}: mask is 5x5, image is 56x40"):
        DatasetCatalog.get(name)

    images, ids, class_map = write_instance_id_png(tmp_path / "ids", scenes)
    table = json.loads(class_map.read_text())
    del table["img_a"]["302"]
    class_map.write_text(json.dumps(table))
    name = unique_name("ids")
    register_dataset(name, "instance_id_png", images, ids, class_map=class_map)
    with pytest.raises(DatasetError, match=r"class_map.json, \['img_a'\]\['302'\]: no class for instance id 302"):
        DatasetCatalog.get(name)


# ------------------------------------------------------------------------------------------- declaration
def _declared_cfg(tmp_path: Path, name: str):
    images, masks = write_binary_masks(tmp_path, mask_scenes())
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_list(["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "2"])
    cfg.merge_from_list(["INPUT.MASK_FORMAT", "bitmask"])
    cfg.DATASETS.REGISTER = [
        {"NAME": name, "FORMAT": "binary_masks", "IMAGE_ROOT": str(images), "ANNOTATIONS": str(masks)}
    ]
    return cfg


def test_yaml_declaration_registers_idempotently(tmp_path):
    name = unique_name("declared")
    cfg = _declared_cfg(tmp_path, name)
    config_file = tmp_path / "declared.yaml"
    config_file.write_text(cfg.dump())
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(config_file))
    prepare_datasets(cfg)
    prepare_datasets(cfg)  # the same declaration twice (setup_cfg called again) is a no-op
    assert len(DatasetCatalog.get(name)) == 3
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(name, "coco", tmp_path, tmp_path / "other.json")
    with pytest.raises(ValueError, match=r"DATASETS.REGISTER\[0\]: missing keys \['annotations'\]"):
        cfg2 = cfg.clone()
        cfg2.defrost()
        cfg2.DATASETS.REGISTER = [{"name": "x", "format": "coco", "image_root": "."}]
        prepare_datasets(cfg2)


def _count_in_fresh_process(cfg_yaml: str, name: str) -> int:
    from detectron2.config import get_cfg as fresh_cfg

    import d2_maskext as package  # a spawned process starts with empty catalogs

    cfg = package.add_maskext_config(fresh_cfg())
    cfg.merge_from_other_cfg(cfg.load_cfg(cfg_yaml))
    package.data.prepare_datasets(cfg)
    return len(DatasetCatalog.get(name))


@pytest.mark.slow
def test_declared_dataset_exists_in_spawned_workers(tmp_path):
    """``launch`` spawns workers that run ``setup_cfg``; the declaration alone must register the dataset there."""
    name = unique_name("spawned")
    cfg = _declared_cfg(tmp_path, name)
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_count_in_fresh_process, (cfg.dump(), name)) == 3
