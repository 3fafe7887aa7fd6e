"""The synthetic dataset is deterministic, and its masks, boxes, areas and polygons agree."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper

from d2_maskext.config import add_maskext_config
from d2_maskext.data.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticSpec,
    ensure_generated,
    generate_image,
    register_synthetic,
)

SPEC = SyntheticSpec(split="val", num_images=12, image_size=96, seed=7, min_size=10, max_size=50)


@pytest.fixture(scope="module")
def coco_json(tmp_path_factory):
    path = ensure_generated(SPEC, tmp_path_factory.mktemp("synth"))
    return path, json.loads(path.read_text())


def test_generation_is_deterministic(tmp_path, coco_json):
    again = ensure_generated(SPEC, tmp_path)
    assert again.read_text() == coco_json[0].read_text()
    for index in range(3):
        first = cv2.imread(str(coco_json[0].parent / "images" / f"{index:06d}.png"))
        second = cv2.imread(str(again.parent / "images" / f"{index:06d}.png"))
        np.testing.assert_array_equal(first, second)
    other_seed = generate_image(SyntheticSpec(split="val", seed=8, image_size=96), 0)[0]
    assert not np.array_equal(other_seed, first)


def _outline_polygons_mask(mask: np.ndarray) -> np.ndarray:
    """Rebuild a mask from its polygons: outer contours filled, hole contours cut out."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(mask, dtype=np.uint8)
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
        if parent < 0:
            cv2.drawContours(out, [contour], -1, 1, thickness=cv2.FILLED)
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
        if parent >= 0:
            cv2.drawContours(out, [contour], -1, 0, thickness=cv2.FILLED)
            cv2.drawContours(out, [contour], -1, 1, thickness=1)  # the contour pixels belong to the object
    return out


def test_masks_boxes_areas_and_polygons_agree(coco_json):
    _, coco = coco_json
    assert {c["name"] for c in coco["categories"]} == set(SYNTHETIC_CLASSES)
    assert len(coco["annotations"]) >= 2 * len(coco["images"])
    holes = 0
    for ann in coco["annotations"]:
        mask = np.ascontiguousarray(mask_util.decode(ann["segmentation"]))
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["area"] == mask.sum()
        rebuilt = _outline_polygons_mask(mask)
        iou = (rebuilt & mask).sum() / (rebuilt | mask).sum()
        assert iou > 0.98, f"annotation {ann['id']}: polygons disagree with mask (IoU {iou:.3f})"
        _, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        holes += int((hierarchy[0][:, 3] >= 0).any())
    assert holes > 0, "rings and frames must produce masks with holes"


def test_occlusion_keeps_each_instance_mostly_visible():
    image, anns = generate_image(SyntheticSpec(split="train", seed=3, image_size=128, max_instances=7), 0)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    union = np.zeros((128, 128), bool)
    for ann in anns:
        assert not (union & (ann["mask"] > 0)).any(), "visible masks must not overlap"
        union |= ann["mask"] > 0


def test_mapper_output_boxes_match_masks(tmp_path):
    register_synthetic("maskext_test_synth_mapper", SPEC, tmp_path)
    cfg = add_maskext_config(get_cfg())
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    from detectron2.data import DatasetCatalog

    record = DatasetCatalog.get("maskext_test_synth_mapper")[0]
    out = DatasetMapper(cfg, is_train=True)(record)
    inst = out["instances"]
    assert len(inst) == len(record["annotations"])
    assert torch.allclose(inst.gt_masks.get_bounding_boxes().tensor, inst.gt_boxes.tensor, atol=1.0)
