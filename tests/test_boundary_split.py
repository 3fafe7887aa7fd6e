"""The boundary-stress synthetic split: deterministic, five classes, large shapes with holes and thin parts that
a 28x28 mask cannot follow (the demo split's shapes it follows almost exactly); the demo split is unchanged."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import MetadataCatalog

from d2_maskext.data.boundary_shapes import BOUNDARY_CLASSES
from d2_maskext.data.synthetic import BUILTIN_SYNTHETIC, SyntheticSpec, ensure_generated, generate_image

SPEC = BUILTIN_SYNTHETIC["maskext_boundary_val"]
NUM_IMAGES = 10


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, list[dict]]]:
    return [generate_image(SPEC, i) for i in range(NUM_IMAGES)]


def roundtrip_iou(mask: np.ndarray, side: int = 28) -> float:
    """IoU of a mask with itself through a side x side box-cropped mask, as Mask R-CNN represents it."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, crop.shape[::-1], interpolation=cv2.INTER_LINEAR) >= 0.5
    return float((back & (crop > 0)).sum() / (back | (crop > 0)).sum())


def test_each_image_is_a_function_of_its_index(samples):
    image, anns = generate_image(SPEC, 3)
    assert np.array_equal(image, samples[3][0])
    assert [a["category_id"] for a in anns] == [a["category_id"] for a in samples[3][1]]
    assert all(np.array_equal(a["mask"], b["mask"]) for a, b in zip(anns, samples[3][1]))
    assert not np.array_equal(samples[3][0], samples[4][0])


def test_instances_are_large_visible_disjoint_and_of_every_class(samples):
    classes = set()
    for image, anns in samples:
        assert image.shape == (640, 640, 3) and image.dtype == np.uint8
        assert SPEC.min_instances <= len(anns) <= SPEC.max_instances
        coverage = np.zeros(image.shape[:2], np.int32)
        for ann in anns:
            mask = ann["mask"]
            ys, xs = np.nonzero(mask)
            assert 0.3 * SPEC.min_size <= max(np.ptp(ys), np.ptp(xs)) + 1 <= SPEC.max_size + 2
            coverage += mask
            classes.add(ann["category_id"])
        assert coverage.max() == 1  # visible masks: occluded parts belong to the object on top only
    assert classes == set(range(len(BOUNDARY_CLASSES)))


def test_a_28x28_mask_loses_the_boundary_split_but_not_the_demo_split(samples):
    boundary = [roundtrip_iou(a["mask"]) for _, anns in samples for a in anns]
    demo_spec = BUILTIN_SYNTHETIC["maskext_synth_val"]
    demo = [roundtrip_iou(a["mask"]) for i in range(NUM_IMAGES) for a in generate_image(demo_spec, i)[1]]
    assert np.mean(demo) > 0.98
    assert np.mean(boundary) < 0.93
    with_holes = 0
    for _, anns in samples:
        for ann in anns:
            _, hierarchy = cv2.findContours(ann["mask"], cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
            with_holes += bool((hierarchy[0][:, 3] >= 0).any())
    assert with_holes >= NUM_IMAGES // 2


def test_split_files_and_metadata_name_the_boundary_classes(tmp_path: Path):
    spec = replace(SPEC, num_images=2)
    coco = json.loads(ensure_generated(spec, tmp_path).read_text())
    assert [c["name"] for c in coco["categories"]] == list(BOUNDARY_CLASSES)
    assert coco["info"]["spec"]["shapes"] == "boundary" and spec.cache_name().endswith("_boundary")
    assert MetadataCatalog.get("maskext_boundary_val").thing_classes == list(BOUNDARY_CLASSES)
    with pytest.raises(ValueError, match="shapes must be one of"):
        generate_image(SyntheticSpec(shapes="blobs"), 0)


def test_demo_split_keeps_its_name_and_stored_spec():
    spec = BUILTIN_SYNTHETIC["maskext_synth_val"]
    assert spec.cache_name() == "v2_val_n150_s256_seed0_i2-7_z16-110_o0.5"
    assert "shapes" not in spec.info() and "pixel_dtype" not in spec.info()
