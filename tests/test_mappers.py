"""Mappers: the default one equals Detectron2's DatasetMapper; LSJ, copy-paste and photometric yield valid
instances; unreadable training images are skipped and counted (or raise, by config)."""

from __future__ import annotations

import copy
import logging
from argparse import Namespace
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_train_loader
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from helpers.dataset_builders import Scene, rectilinear, ring, unique_name, write_coco
from PIL import Image

import d2_maskext  # noqa: F401  (registers formats and mappers)
from d2_maskext.config import add_maskext_config
from d2_maskext.data import SyntheticSpec, register_dataset, register_synthetic
from d2_maskext.data.formats import ImageReadError
from d2_maskext.data.mappers import (
    MAPPER_REGISTRY,
    ColorJitter,
    CopyPasteDatasetMapper,
    LSJDatasetMapper,
    MaskExtDatasetMapper,
    build_mapper,
    paste_instances,
)

ROOT = Path(__file__).resolve().parents[1]
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # BGR colour of each class in the coloured dataset


def _cfg(**overrides) -> CfgNode:
    cfg = add_maskext_config(get_cfg())
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (48, 96, 160)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TEST = 80
    for key, value in overrides.items():
        *path, leaf = key.split("__")
        node = cfg
        for part in path:
            node = node[part]
        node[leaf] = value
    return cfg


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[str, list[dict]]:
    """Six 96-px synthetic images (RLE masks with holes, occlusions)."""
    name = unique_name("mapsynth")
    spec = SyntheticSpec(split="train", num_images=6, image_size=96, min_size=14, max_size=44, min_instances=3)
    register_synthetic(name, spec, tmp_path_factory.mktemp("synth"))
    return name, DatasetCatalog.get(name)


def _as_polygons(records: list[dict]) -> list[dict]:
    out = copy.deepcopy(records)
    for record in out:
        for ann in record["annotations"]:
            contours, _ = cv2.findContours(mask_util.decode(ann["segmentation"]), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            ann["segmentation"] = [c.ravel().astype(float).tolist() for c in contours if len(c) >= 3]
        record["annotations"] = [a for a in record["annotations"] if a["segmentation"]]
    return out


def write_colored_dataset(root: Path) -> tuple[Path, Path]:
    """A COCO dataset whose instances are painted in their class colour: checks that masks and classes stay
    aligned through augmentation. Returns (image root, annotation file)."""
    h, w = 60, 80
    scenes = []
    for k in range(3):
        image = np.full((h, w, 3), 40, np.uint8)
        instances = [
            rectilinear("c0", h, w, [(2 + k, 2), (30, 2), (30, 25 + k), (2 + k, 25 + k)]),
            rectilinear("c1", h, w, [(40, 5), (75 - k, 5), (75 - k, 20), (55, 20), (55, 50), (40, 50)]),
            ring("c2", h, w, (18, 44), 12 - k, 5),
        ]
        for inst in instances:
            image[inst.mask] = COLORS[int(inst.label[1])]
        scenes.append(Scene(f"img{k}", image, instances))
    return root / "images", write_coco(root, scenes, {"c0": 1, "c1": 2, "c2": 3})


@pytest.fixture(scope="module")
def colored(tmp_path_factory) -> str:
    name = unique_name("colored")
    register_dataset(name, "coco", *write_colored_dataset(tmp_path_factory.mktemp("colored")))
    return name


def assert_valid_instances(out: dict, boxes_from_masks: bool) -> None:
    """Boxes inside the image and consistent with masks, masks non-empty, masks and classes aligned by colour."""
    inst: Instances = out["instances"]
    h, w = out["image"].shape[1:]
    assert inst.image_size == (h, w)
    assert len(inst.gt_boxes) == len(inst.gt_classes) == len(inst.gt_masks)
    boxes = inst.gt_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    masks = inst.gt_masks.tensor
    assert masks.flatten(1).any(dim=1).all()
    mask_boxes = inst.gt_masks.get_bounding_boxes().tensor
    if boxes_from_masks:
        assert torch.equal(boxes, mask_boxes)
    else:  # boxes transformed from the annotation: they contain the (nearest-resized) mask, within a pixel
        assert (mask_boxes[:, :2] >= boxes[:, :2] - 1).all() and (mask_boxes[:, 2:] <= boxes[:, 2:] + 1).all()
    image = out["image"].permute(1, 2, 0).numpy()
    checked = 0
    for mask, cls in zip(masks.numpy(), inst.gt_classes.tolist()):
        interior = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if interior.any():
            assert np.abs(np.median(image[interior], axis=0) - COLORS[cls]).max() <= 2, cls
            checked += 1
    assert checked or len(inst) == 0


# ---------------------------------------------------------------------------------------- default mapper
def _assert_same_output(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert torch.equal(a["image"], b["image"])
    ia, ib = a["instances"], b["instances"]
    assert torch.equal(ia.gt_boxes.tensor, ib.gt_boxes.tensor) and torch.equal(ia.gt_classes, ib.gt_classes)
    if isinstance(ia.gt_masks, PolygonMasks):
        pairs = [(p, q) for x, y in zip(ia.gt_masks.polygons, ib.gt_masks.polygons) for p, q in zip(x, y, strict=True)]
        assert len(ia.gt_masks) == len(ib.gt_masks) and all(np.array_equal(p, q) for p, q in pairs)
    else:
        assert torch.equal(ia.gt_masks.tensor, ib.gt_masks.tensor)


@pytest.mark.parametrize(
    "mask_format,flip,crop", [("bitmask", "horizontal", False), ("polygon", "horizontal", False), ("bitmask", "vertical", True)]
)
def test_default_mapper_equals_detectron2(synthetic, mask_format, flip, crop):
    records = synthetic[1] if mask_format == "bitmask" else _as_polygons(synthetic[1])
    cfg = _cfg(INPUT__MASK_FORMAT=mask_format, INPUT__RANDOM_FLIP=flip, INPUT__CROP__ENABLED=crop)
    cfg.INPUT.CROP.SIZE = [0.6, 0.6]
    before = copy.deepcopy(records)
    for is_train, cases in ((True, records * 2), (False, records[:2])):
        ours, stock = MaskExtDatasetMapper(cfg, is_train), DatasetMapper(cfg, is_train)
        for seed, record in enumerate(cases):
            np.random.seed(seed)
            expected = stock(record)
            np.random.seed(seed)
            actual = ours(record)
            if is_train:
                _assert_same_output(actual, expected)
            else:
                assert actual.keys() == expected.keys() and torch.equal(actual["image"], expected["image"])
    assert records == before, "mapping must not modify the dataset"


def test_build_mapper_default_and_every_registered_name(synthetic):
    cfg = _cfg(DATASETS__TRAIN=(synthetic[0],), INPUT__LSJ__IMAGE_SIZE=64)
    assert type(build_mapper(cfg, True)) is MaskExtDatasetMapper
    for name in ("DatasetMapper", "MaskExtDatasetMapper", "LSJDatasetMapper", "CopyPasteDatasetMapper"):
        cfg.INPUT.MAPPER.NAME = name
        out = build_mapper(cfg, True)(synthetic[1][0])
        assert out["image"].dtype == torch.uint8 and len(out["instances"]) > 0
    cfg.INPUT.MAPPER.NAME = "DatasetMapper"
    cfg.INPUT.PHOTOMETRIC.ENABLED = True
    with pytest.raises(ValueError, match="mapper 'DatasetMapper' does not apply it"):
        build_mapper(cfg, True)
    assert "CopyPasteDatasetMapper" in MAPPER_REGISTRY


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "synthetic").glob("mapper_*.yaml")), ids=lambda p: p.stem)
def test_mapper_configs_build(config, synthetic):
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(config))
    cfg.DATASETS.TRAIN = (synthetic[0],)
    mapper = build_mapper(cfg, True)
    assert type(mapper).__name__ == cfg.INPUT.MAPPER.NAME
    assert len(mapper(synthetic[1][1])["instances"]) > 0


# --------------------------------------------------------------------------------------- LSJ / copy-paste
@pytest.mark.parametrize("mapper_cls", [MaskExtDatasetMapper, LSJDatasetMapper, CopyPasteDatasetMapper])
def test_mappers_yield_valid_aligned_instances(colored, mapper_cls):
    cfg = _cfg(DATASETS__TRAIN=(colored,), INPUT__LSJ__IMAGE_SIZE=64, INPUT__LSJ__MIN_SCALE=0.5)
    mapper = mapper_cls(cfg, True)
    records = DatasetCatalog.get(colored)
    for seed in range(12):
        np.random.seed(seed)
        out = mapper(records[seed % len(records)])
        assert_valid_instances(out, boxes_from_masks=mapper_cls is not MaskExtDatasetMapper)
        if mapper_cls is not MaskExtDatasetMapper:
            assert out["image"].shape == (3, 64, 64)


def test_copy_paste_keeps_annotations_consistent_under_occlusion():
    h, w = 20, 30
    target_masks = torch.zeros(3, h, w, dtype=torch.bool)
    target_masks[0, 2:10, 2:12] = True  # half covered by the paste
    target_masks[1, 12:16, 20:24] = True  # fully covered: must disappear
    target_masks[2, 15:19, 2:6] = True  # untouched
    source_masks = torch.zeros(2, h, w, dtype=torch.bool)
    source_masks[0, 0:18, 7:26] = True
    source_masks[1, 0:3, 0:3] = True  # not selected
    target = {"file_name": "t", "image": torch.zeros(3, h, w, dtype=torch.uint8), "instances": Instances(
        (h, w), gt_boxes=BitMasks(target_masks).get_bounding_boxes(), gt_classes=torch.tensor([0, 1, 2]), gt_masks=BitMasks(target_masks))}
    source = {"image": torch.full((3, h, w), 200, dtype=torch.uint8), "instances": Instances(
        (h, w), gt_boxes=Boxes(torch.zeros(2, 4)), gt_classes=torch.tensor([3, 4]), gt_masks=BitMasks(source_masks))}  # fmt: skip

    out = paste_instances(target, source, subset=np.array([0]))
    inst = out["instances"]
    assert out["file_name"] == "t" and inst.gt_classes.tolist() == [0, 2, 3]
    masks = inst.gt_masks.tensor
    assert torch.equal(masks[0], target_masks[0] & ~source_masks[0]) and masks[0].sum() == 8 * 5
    assert torch.equal(masks[1], target_masks[2]) and torch.equal(masks[2], source_masks[0])
    assert inst.gt_boxes.tensor.tolist() == [[2, 2, 7, 10], [2, 15, 6, 19], [7, 0, 26, 18]]
    assert torch.equal(out["image"], torch.where(source_masks[0], 200, 0).to(torch.uint8).expand(3, h, w))


def test_copy_paste_mapper_masks_stay_disjoint(synthetic):
    """Synthetic masks are visible (disjoint) masks: after pasting, no pixel may belong to two instances."""
    cfg = _cfg(DATASETS__TRAIN=(synthetic[0],), INPUT__LSJ__IMAGE_SIZE=96, INPUT__LSJ__MIN_SCALE=0.8)
    mapper, lsj = CopyPasteDatasetMapper(cfg, True), LSJDatasetMapper(cfg, True)
    pasted = 0
    for seed, record in enumerate(synthetic[1]):
        np.random.seed(seed)
        inst = mapper(record)["instances"]
        assert inst.gt_masks.tensor.sum(dim=0).max() <= 1
        assert torch.equal(inst.gt_boxes.tensor, inst.gt_masks.get_bounding_boxes().tensor)
        np.random.seed(seed)
        pasted += len(inst) != len(lsj(record)["instances"])
    assert pasted > 0


# ------------------------------------------------------------------------------------------- photometric
def test_color_jitter_properties():
    rng = np.random.default_rng(0)
    image = rng.integers(30, 220, (32, 48, 3), dtype=np.uint8)
    assert np.array_equal(ColorJitter().get_transform(image).apply_image(image), image)  # all effects off

    np.random.seed(1)
    bgr = ColorJitter(0.3, 0.3, 0.3, 0.05, 0.1, "BGR").get_transform(image).apply_image(image)
    np.random.seed(1)
    rgb = ColorJitter(0.3, 0.3, 0.3, 0.05, 0.1, "RGB").get_transform(image[..., ::-1].copy()).apply_image(image[..., ::-1].copy())
    assert bgr.dtype == np.uint8 and np.abs(bgr.astype(int) - rgb[..., ::-1]).max() <= 1  # channel order handled

    luma = np.array([0.114, 0.587, 0.299])  # BGR
    for effect in ({"hue": 0.2}, {"saturation": 0.5}):  # both keep the brightness of every pixel
        np.random.seed(3)
        out = ColorJitter(**effect).get_transform(image).apply_image(image)
        unclipped = ((out > 0) & (out < 255)).all(axis=2)
        assert not np.array_equal(out, image)
        assert np.abs(out @ luma - image @ luma)[unclipped].max() <= 1.0

    np.random.seed(2)
    factor = np.random.uniform(0.7, 1.3)
    np.random.seed(2)
    out = ColorJitter(brightness=0.3).get_transform(image).apply_image(image)
    assert np.abs(out.astype(int) - np.clip(np.round(image * factor), 0, 255)).max() <= 1


def test_photometric_option_changes_pixels_only(colored):
    records = DatasetCatalog.get(colored)
    for name in ("MaskExtDatasetMapper", "LSJDatasetMapper"):
        plain = build_mapper(_cfg(INPUT__MAPPER__NAME=name, INPUT__LSJ__IMAGE_SIZE=64), True)
        jittered = build_mapper(_cfg(INPUT__MAPPER__NAME=name, INPUT__LSJ__IMAGE_SIZE=64, INPUT__PHOTOMETRIC__ENABLED=True), True)
        assert isinstance(jittered.augmentations.augs[-1], ColorJitter)
        np.random.seed(5)
        a = plain(records[0])
        np.random.seed(5)
        b = jittered(records[0])
        assert not torch.equal(a["image"], b["image"])
        assert torch.equal(a["instances"].gt_masks.tensor, b["instances"].gt_masks.tensor)
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)


# ------------------------------------------------------------------------------------------------ faults
@pytest.fixture
def broken_records(synthetic, tmp_path) -> list[dict]:
    """The synthetic records with image #2 truncated (a corrupt file met mid-training)."""
    records = copy.deepcopy(synthetic[1])
    data = Path(records[2]["file_name"]).read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(data[: len(data) // 3])
    records[2]["file_name"] = str(broken)
    return records


def test_corrupt_image_mid_training_is_skipped_and_counted(broken_records, caplog):
    mapper = MaskExtDatasetMapper(_cfg(), True)
    loader = build_detection_train_loader(dataset=broken_records, mapper=mapper, total_batch_size=2, num_workers=0)
    with caplog.at_level(logging.WARNING, logger="d2_maskext"):
        batches = [batch for _, batch in zip(range(9), loader)]
    assert all(len(b) == 2 and all("instances" in x for x in b) for b in batches)
    assert mapper.bad_images.skipped >= 2 and mapper.bad_images.files == {broken_records[2]["file_name"]}
    assert f"skipping training image: {broken_records[2]['file_name']}: cannot decode image" in caplog.text
    assert "2 skip(s) of 1 distinct image(s) so far in the main process" in caplog.text


def test_bad_images_raise_by_config_and_at_inference(broken_records):
    with pytest.raises(ImageReadError, match=r"broken.png: cannot decode image"):
        MaskExtDatasetMapper(_cfg(INPUT__MAPPER__ON_BAD_IMAGE="raise"), True)(broken_records[2])
    with pytest.raises(ImageReadError, match=r"broken.png"):
        MaskExtDatasetMapper(_cfg(), False)(broken_records[2])  # skipping would corrupt the evaluation
    wrong_size = {**broken_records[0], "height": 50}
    mapper = MaskExtDatasetMapper(_cfg(), True)
    assert mapper(wrong_size) is None and mapper.bad_images.skipped == 1


def test_consecutive_bad_images_stop_training(broken_records):
    everything_broken = [{**r, "file_name": broken_records[2]["file_name"]} for r in broken_records]
    mapper = MaskExtDatasetMapper(_cfg(INPUT__MAPPER__MAX_CONSECUTIVE_BAD_IMAGES=4), True)
    loader = build_detection_train_loader(dataset=everything_broken, mapper=mapper, total_batch_size=2, num_workers=0)
    with pytest.raises(RuntimeError, match=r"4 training images in a row could not be read .*MAX_CONSECUTIVE_BAD_IMAGES"):
        next(iter(loader))


def test_decompression_bomb_skipped_by_mapper(synthetic, monkeypatch, caplog):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 96 * 96 - 1)
    mapper = CopyPasteDatasetMapper(_cfg(DATASETS__TRAIN=(synthetic[0],), INPUT__LSJ__IMAGE_SIZE=64), True)
    with caplog.at_level(logging.WARNING, logger="d2_maskext"):
        assert mapper(synthetic[1][0]) is None
    assert "refused as a possible decompression bomb" in caplog.text and mapper.bad_images.skipped == 1


@pytest.mark.slow
def test_training_with_declared_dataset_copy_paste_and_a_corrupt_image(tmp_path, caplog):
    """End to end: a dataset declared in the config only, copy-paste + photometric, a file corrupted after
    registration; three iterations must run and the skip must be logged."""
    from d2_maskext.cli import setup_cfg
    from d2_maskext.engine import Trainer

    images, annotations = write_colored_dataset(tmp_path / "data")
    (images / "img1.png").write_bytes(b"not an image")
    name = unique_name("declared")
    declaration = [{"name": name, "format": "coco", "image_root": str(images), "annotations": str(annotations)}]
    args = Namespace(
        config_file=str(ROOT / "configs" / "synthetic" / "mapper_copy_paste.yaml"),
        opts=[
            "DATASETS.REGISTER", repr(declaration), "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
            "MODEL.ROI_HEADS.NUM_CLASSES", "3", "INPUT.LSJ.IMAGE_SIZE", "64", "INPUT.PHOTOMETRIC.ENABLED", "True",
            "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
            "OUTPUT_DIR", str(tmp_path / "out"),
        ],
        eval_only=False, resume=False, num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto",
    )  # fmt: skip
    trainer = Trainer(setup_cfg(args))
    trainer.resume_or_load(resume=False)
    with caplog.at_level(logging.WARNING, logger="d2_maskext"):
        trainer.train()
    assert trainer.iter == 3  # MAX_ITER reached: every iteration got a full batch despite the bad file
    assert f"skipping training image: {images / 'img1.png'}: cannot decode image" in caplog.text
