"""Instance label maps (``format: label_maps``): exact masks from 8/16/32-bit PNG and TIFF, mask suffixes,
class sidecars, every problem named by file, registration from YAML and Python, and large maps."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers.dataset_builders import (
    Scene,
    label_map_ids,
    loaded_instances,
    mask_scenes,
    source_instances,
    unique_name,
    write_label_map,
    write_label_maps,
)
from helpers.train_net_runner import load_script

from d2_maskext.config import add_maskext_config
from d2_maskext.data import DatasetError, prepare_datasets, register_dataset
from d2_maskext.data.mappers import build_mapper
from d2_maskext.data.validation import scan_dataset
from d2_maskext.utils.image_io import read_label_map
from d2_maskext.utils.rle import mask_to_rle

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "examples" / "label_maps_16bit.yaml"


def load(**kwargs) -> tuple[list[dict], list[str]]:
    name = unique_name("labelmaps")
    register_dataset(name, "label_maps", **kwargs)
    return DatasetCatalog.get(name), MetadataCatalog.get(name).thing_classes


def assert_exact(annotations: list[dict], labels: np.ndarray, limit: int | None = None) -> None:
    """Each annotation (the first ``limit``) covers exactly the pixels of one label-map value (IoU 1.0), and
    its box is tight; compared inside the box, with the areas proving nothing lies outside it."""
    for annotation in annotations[:limit]:
        rle = annotation["segmentation"]
        x, y, w, h = (int(v) for v in annotation["bbox"])
        crop = mask_util.decode(rle)[y : y + h, x : x + w].astype(bool)
        values = np.unique(labels[y : y + h, x : x + w][crop])
        assert values.size == 1 and values[0] != 0
        assert np.array_equal(crop, labels[y : y + h, x : x + w] == values[0])
        assert mask_util.area(rle) == crop.sum() == np.count_nonzero(labels == values[0])
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()


def one_class(scenes: list[Scene]) -> list[Scene]:
    """The scenes as a label map without sidecar sees them: every instance of the default class."""
    for scene in scenes:
        for inst in scene.instances:
            inst.label = "object"
    return scenes


@pytest.mark.parametrize(
    "dtype, extension",
    [(np.uint8, ".png"), (np.uint16, ".png"), (np.uint8, ".tif"), (np.uint16, ".tif"), (np.uint32, ".tif")],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_masks_are_exact_for_every_bit_depth(tmp_path, dtype, extension):
    scenes = mask_scenes()
    images, masks = write_label_maps(tmp_path, scenes, dtype, extension)
    records, classes = load(image_root=images, mask_root=masks)
    assert classes == ["object"]
    assert loaded_instances(records, classes) == source_instances(one_class(scenes))
    labels = read_label_map(masks / f"img_a{extension}")
    assert labels.dtype == dtype and sorted(np.unique(labels[labels > 0]).tolist()) == sorted(label_map_ids(dtype, 3))
    assert_exact(records[0]["annotations"], labels)
    for annotation in records[0]["annotations"]:  # byte-identical to encoding each instance's full mask
        instance_id = labels[mask_util.decode(annotation["segmentation"]).astype(bool)][0]
        assert annotation["segmentation"] == mask_to_rle(labels == instance_id)
    assert all(isinstance(a["segmentation"], dict) and a["iscrowd"] == 0 for r in records for a in r["annotations"])


def test_masks_beside_images_matched_by_suffix(tmp_path):
    """cellpose's layout: ``<stem>.png`` and ``<stem>_masks.png`` in one folder."""
    scenes = mask_scenes()
    images, masks = write_label_maps(tmp_path, scenes, mask_suffix="_masks")
    for mask in masks.iterdir():
        mask.rename(images / mask.name)
    records, _ = load(image_root=images, mask_root=images, mask_suffix="_masks")
    assert sorted(Path(r["file_name"]).name for r in records) == ["img_a.png", "img_b.png", "img_empty.png"]
    assert loaded_instances(records, ["object"]) == source_instances(one_class(scenes))
    with pytest.raises(DatasetError, match="mask root is the image folder, so mask_suffix"):
        load(image_root=images, mask_root=images)


@pytest.mark.parametrize("sidecar", ["class_root", "class_map"])
def test_classes_from_sidecar(tmp_path, sidecar):
    scenes = mask_scenes()
    images, masks = write_label_maps(tmp_path, scenes, extension=".tif", classes=["dog", "cat"])
    if sidecar == "class_root":
        records, classes = load(image_root=images, mask_root=masks, class_root=tmp_path / "classes", thing_classes=["dog", "cat"])
    else:
        records, classes = load(image_root=images, mask_root=masks, class_map=tmp_path / "class_map.json")
        assert classes == ["cat", "dog"]  # discovered, sorted
    assert loaded_instances(records, classes) == source_instances(scenes)


def test_class_map_tie_and_background_are_problems(tmp_path):
    scenes = mask_scenes()
    images, masks = write_label_maps(tmp_path, scenes, classes=["dog", "cat"])
    class_file = tmp_path / "classes" / "img_a.png"
    values = cv2.imread(str(class_file), cv2.IMREAD_UNCHANGED)
    cat_box, dog_shape = scenes[0].instances[0].mask, scenes[0].instances[1].mask
    ys, xs = np.nonzero(cat_box)
    half = len(ys) // 2
    values[ys[:half], xs[:half]] = 2 if values[ys[0], xs[0]] == 1 else 1  # cat box: half cat, half dog
    values[dog_shape] = 0  # dog: no class under it
    values[np.nonzero(dog_shape)[0][0], np.nonzero(dog_shape)[1][0]] = 1
    cv2.imwrite(str(class_file), values)
    ids = label_map_ids(np.uint16, 3)
    with pytest.raises(DatasetError) as error:
        load(image_root=images, mask_root=masks, class_root=tmp_path / "classes", thing_classes=["dog", "cat"])
    message = str(error.value)
    assert "unclear_instance_class (fatal) x2" in message
    assert f"{class_file}, instance id {ids[0]}: a tie: class values [1, 2]" in message
    assert f"{class_file}, instance id {ids[1]}: mostly background (0): class values [0, 1]" in message


def test_validator_names_every_problem_file(tmp_path, capsys):
    scenes = mask_scenes()
    images, masks = write_label_maps(tmp_path, scenes, mask_suffix="_masks")
    write_label_map(masks / "img_b_masks.png", np.ones((7, 9), np.uint16))  # wrong size
    (masks / "orphan_masks.png").write_bytes((masks / "img_a_masks.png").read_bytes())  # mask without image
    cv2.imwrite(str(images / "unlabelled.png"), scenes[0].image)  # image without mask
    name = unique_name("labelmaps")
    register_dataset(name, "label_maps", images, mask_root=masks, mask_suffix="_masks")
    report = scan_dataset(name)
    assert dict(report.problems.counts) == {
        "size_mismatch": 1, "missing_image": 1, "missing_mask": 1, "empty_label_map": 1, "no_annotations": 1,
    }  # fmt: skip
    text = report.format()
    assert f"{masks / 'img_b_masks.png'}: mask is 9x7, image is 56x40 ({images / 'img_b.png'})" in text
    assert f"{masks / 'orphan_masks.png'}: no image orphan.* under {images}" in text
    assert f"{images / 'unlabelled.png'}: no label map unlabelled_masks.png/.tif under {masks}" in text
    assert f"{masks / 'img_empty_masks.png'}: every pixel is 0 (background)" in text
    assert "missing_mask (dropped) x1" in text and report.num_images == 2  # img_a and img_empty; the rest skipped

    tool = load_script("tools/validate_dataset.py")
    args = ["--format", "label_maps", "--image-root", str(images), "--mask-root", str(masks), "--mask-suffix", "_masks"]
    assert tool.main(args) == 1
    out = capsys.readouterr().out
    assert "size_mismatch (fatal) x1" in out and "missing_image (fatal) x1" in out and "missing_mask (dropped) x1" in out


def test_registration_from_yaml_and_python(tmp_path):
    images, masks = write_label_maps(tmp_path, mask_scenes(), extension=".tif", mask_suffix="_masks", classes=["dog", "cat"])
    name = unique_name("declared")
    config = tmp_path / "declared.yaml"
    config.write_text(
        "DATASETS:\n  REGISTER:\n"
        f"    - {{name: {name}, format: label_maps, image_root: {images}, mask_root: {masks}, mask_suffix: _masks,\n"
        f"       class_root: {tmp_path / 'classes'}, thing_classes: [dog, cat]}}\n"
        f"  TRAIN: ('{name}',)\n  TEST: ()\n"
        "MODEL:\n  ROI_HEADS:\n    NUM_CLASSES: 2\nINPUT:\n  MASK_FORMAT: bitmask\n"
    )
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(config))
    prepare_datasets(cfg)
    assert MetadataCatalog.get(name).thing_classes == ["dog", "cat"]
    assert sum(len(r["annotations"]) for r in DatasetCatalog.get(name)) == 4

    records, classes = load(image_root=str(images), annotations=str(masks), mask_suffix="_masks")  # annotations: same key
    assert len(records) == 3 and classes == ["object"]
    with pytest.raises(ValueError, match="exactly once"):
        register_dataset(unique_name("x"), "label_maps", images, masks, mask_root=masks)
    with pytest.raises(ValueError, match="options of format label_maps"):
        register_dataset(unique_name("x"), "coco", images, tmp_path / "a.json", mask_suffix="_masks")
    with pytest.raises(DatasetError, match="2 thing_classes need class_root or class_map"):
        load(image_root=images, mask_root=masks, mask_suffix="_masks", thing_classes=["dog", "cat"])


def test_large_label_map(tmp_path):
    """4096 x 4096 with 2,000 instances: encoded from runs, never one full-size mask per instance."""
    rng = np.random.default_rng(0)
    size = 4096
    ids = np.zeros((size, size), np.uint16)
    corners = rng.integers(0, size - 40, (2000, 2))
    for k, (y, x) in enumerate(corners, start=1):
        ids[y : y + 40, x : x + 25] = k  # later ones overlap earlier ones, as in a painted label map
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((size, size), np.uint8))
    cv2.imwrite(str(tmp_path / "big_masks.png"), ids, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    records, _ = load(image_root=tmp_path, mask_root=tmp_path, mask_suffix="_masks")
    annotations = records[0]["annotations"]
    present = np.unique(ids[ids > 0])
    assert len(annotations) == present.size
    assert sorted(int(mask_util.area(a["segmentation"])) for a in annotations) == sorted(np.bincount(ids.ravel())[present])
    assert_exact(annotations, ids, limit=5)


def _example_dataset(root: Path) -> None:
    """The example config's dataset: 16-bit single-channel images and ``_masks`` label maps."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        scenes = mask_scenes()[:2]
        for scene in scenes:
            scene.image = rng.integers(0, 4000, scene.size, dtype=np.uint16)
        write_label_maps(root / "datasets" / "cells16" / split, scenes, mask_suffix="_masks")


def test_example_config_loads_builds_and_trains_a_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's dataset paths are relative to the working directory
    _example_dataset(tmp_path)
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(EXAMPLE_CONFIG))
    for entry in cfg.DATASETS.REGISTER:
        entry["name"] = unique_name(entry["name"])  # fresh names: catalogs are global
    cfg.DATASETS.TRAIN = (cfg.DATASETS.REGISTER[0]["name"],)
    cfg.DATASETS.TEST = (cfg.DATASETS.REGISTER[1]["name"],)
    prepare_datasets(cfg)
    records = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    assert [len(r["annotations"]) for r in records] == [3, 1]
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.pixel_mean.numel() == 1
    mapper = build_mapper(cfg, is_train=True)
    batch = [mapper(dict(r)) for r in records]
    assert batch[0]["image"].shape[0] == 1 and batch[0]["image"].max() > 255  # 16-bit values kept
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert torch.isfinite(sum(losses.values()))


def test_json_class_map_without_an_instance_is_named(tmp_path):
    images, masks = write_label_maps(tmp_path, mask_scenes())
    table = json.loads((tmp_path / "class_map.json").read_text())
    missing = next(iter(table["img_b"]))
    del table["img_b"][missing]
    (tmp_path / "class_map.json").write_text(json.dumps(table))
    with pytest.raises(DatasetError, match=rf"class_map.json, \['img_b'\]\['{missing}'\]: no class for instance id {missing}"):
        load(image_root=images, mask_root=masks, class_map=tmp_path / "class_map.json")
