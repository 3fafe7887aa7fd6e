"""Tiled inference (``MODEL.MASKEXT.TILING``): config refusals, tile geometry, the mask-aware merge, equality
with whole-image inference, output types, ``DefaultPredictor`` and the compact memory layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from helpers.lazy_tiny import TINY_LAZY_CONFIG, load_tiny_lazy
from helpers.train_net_runner import tiny_cfg

from d2_maskext.data.synthetic import BUILTIN_SYNTHETIC, generate_image, mosaic_scene
from d2_maskext.evaluation.coco_evaluator import instances_to_coco_results
from d2_maskext.modeling.tiling import (
    RLE_FIELD,
    TiledDetection,
    TilingSettings,
    crop_to_rle,
    detect_scene,
    merge_detections,
    resolve_object,
    tile_grid,
)
from d2_maskext.utils.rle import mask_to_rle

# A random tiny model with every proposal kept: many detections of every class, in any tile.
BASE = ("MODEL.META_ARCHITECTURE", "MaskExtRCNN", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "INPUT.MIN_SIZE_TEST", "0")


def _model(tmp: Path, *opts: str, state: dict | None = None) -> torch.nn.Module:
    model = build_model(tiny_cfg(tmp, *BASE, *opts)).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


@pytest.fixture(scope="module")
def stock(tmp_path_factory) -> torch.nn.Module:
    torch.manual_seed(0)
    return _model(tmp_path_factory.mktemp("tiling"))


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 200, 250), dtype=np.uint8))


def _tiled(stock: torch.nn.Module, tmp: Path, *opts: str) -> torch.nn.Module:
    return _model(tmp, *opts, state=stock.state_dict())


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("opts", "key"),
    [
        (("MODEL.MASKEXT.TILING.SIZE", "128", "INPUT.MIN_SIZE_TEST", "128"), "INPUT.MIN_SIZE_TEST"),
        (("MODEL.MASKEXT.TILING.SIZE", "32"), "MODEL.MASKEXT.TILING.SIZE"),
        (("MODEL.MASKEXT.TILING.SIZE", "128", "MODEL.MASKEXT.TILING.MERGE_METRIC", "dice"), "MERGE_METRIC"),
        (("MODEL.MASKEXT.TILING.SIZE", "128", "MODEL.MASKEXT.TILING.OVERLAP", "1.0"), "OVERLAP"),
    ],
)
def test_bad_tiling_configs_are_refused_at_model_build_naming_the_key(tmp_path, opts, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(tiny_cfg(tmp_path, *BASE, *opts))


def test_tiling_off_by_default(stock):
    assert stock.tiling is None


# ------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize(("height", "width", "size", "overlap"), [(300, 1000, 128, 0.25), (129, 128, 128, 0.2), (90, 700, 256, 0.0), (50, 60, 128, 0.5)])
def test_tile_grid_covers_the_image_with_full_tiles_and_the_overlap(height, width, size, overlap):
    tiles = tile_grid(height, width, size, overlap)
    covered = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in tiles:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (x1 - x0, y1 - y0) == (min(size, width), min(size, height))  # edge tiles moved in, not shrunk
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({t[0] for t in tiles})
    for a, b in zip(xs, xs[1:]):
        assert a + size - b >= round(size * overlap)  # neighbours overlap at least as asked
    assert max(t[2] for t in tiles) == width and max(t[3] for t in tiles) == height


# ------------------------------------------------------------------------------------------- merging
def _disc(height: int, width: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def _piece(full: np.ndarray, window: tuple[int, int, int, int], source: int, category: int = 0, score: float = 0.9) -> TiledDetection:
    """The detection a tile would make of ``full`` (a scene-size mask): its part inside ``window``, as a crop."""
    seen = np.zeros_like(full)
    x0, y0, x1, y1 = window
    seen[y0:y1, x0:x1] = full[y0:y1, x0:x1]
    ys, xs = np.nonzero(seen)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    cx0, cy0, cx1, cy1 = max(int(box[0]) - 1, x0), max(int(box[1]) - 1, y0), min(int(box[2]) + 1, x1), min(int(box[3]) + 1, y1)
    whole = bool(seen.sum() == full.sum())
    return TiledDetection(box, score, category, source, window, whole, cx0, cy0, seen[cy0:cy1, cx0:cx1].copy())


LEFT, RIGHT = (0, 0, 60, 100), (40, 0, 100, 100)  # two tiles overlapping in columns 40..59


def _paste(det: TiledDetection, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    h, w = det.mask.shape
    out[det.y0 : det.y0 + h, det.x0 : det.x0 + w] = det.mask
    return out


@pytest.mark.parametrize("metric", ["ios", "iou"])
def test_an_object_cut_by_a_seam_becomes_one_instance_with_the_union_mask_and_its_box(metric):
    full = _disc(100, 100, 50, 50, 30)  # wider than the overlap: both tiles cut it
    pieces = [_piece(full, LEFT, 0, score=0.9), _piece(full, RIGHT, 1, score=0.7)]
    assert not any(p.whole for p in pieces)
    groups = merge_detections(pieces, metric, 0.5, cell=40)
    assert len(groups) == 1
    merged = resolve_object(groups[0])
    assert np.array_equal(_paste(merged, full.shape), full)
    ys, xs = np.nonzero(full)
    assert merged.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert merged.score == 0.9


def test_a_whole_view_wins_over_a_cut_one():
    full = _disc(100, 100, 50, 50, 8)  # inside the overlap: the left tile sees it whole
    whole = _piece(full, LEFT, 0, score=0.6)
    cut = _piece(full, (52, 0, 100, 100), 1, score=0.8)
    assert whole.whole and not cut.whole
    merged = resolve_object(merge_detections([whole, cut], "ios", 0.5, cell=40)[0])
    assert np.array_equal(_paste(merged, full.shape), full) and merged.box == whole.box and merged.score == 0.8


def test_a_cut_view_of_an_object_another_tile_sees_whole_is_dropped_whatever_its_class():
    full = _disc(100, 100, 45, 50, 10)  # whole in the left tile, cut by the right tile's border at x = 40
    whole, cut = _piece(full, LEFT, 0, category=0, score=0.6), _piece(full, RIGHT, 1, category=3, score=0.9)
    assert whole.whole and not cut.whole
    groups = merge_detections([whole, cut], "ios", 0.5, cell=40)
    assert [[m.category for m in g] for g in groups] == [[0]]


def test_far_apart_objects_other_classes_and_one_tiles_own_detections_stay_apart():
    a, b = _disc(100, 100, 45, 20, 10), _disc(100, 100, 50, 75, 10)
    far = [_piece(a, LEFT, 0), _piece(b, RIGHT, 1)]
    assert len(merge_detections(far, "ios", 0.5, cell=40)) == 2
    inside_overlap = _disc(100, 100, 50, 50, 8)  # both tiles see it whole
    classes = [_piece(inside_overlap, LEFT, 0, category=0), _piece(inside_overlap, RIGHT, 1, category=1)]
    assert all(p.whole for p in classes) and len(merge_detections(classes, "ios", 0.5, cell=40)) == 2
    same_tile = [_piece(a, LEFT, 0), _piece(a, LEFT, 0, score=0.5)]
    assert len(merge_detections(same_tile, "ios", 0.5, cell=40)) == 2


def test_rle_of_a_crop_equals_the_rle_of_the_full_mask():
    full = _disc(70, 90, 30, 40, 12) ^ _disc(70, 90, 30, 40, 5)  # a ring: several runs per column
    ys, xs = np.nonzero(full)
    crop = full[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert crop_to_rle(crop, int(xs.min()), int(ys.min()), 70, 90) == mask_to_rle(full)
    assert crop_to_rle(np.zeros((3, 4), bool), 5, 5, 70, 90) == mask_to_rle(np.zeros((70, 90), bool))


# ----------------------------------------------------------------------------------------- inference
def test_a_tile_covering_the_image_gives_whole_image_inference(stock, image, tmp_path):
    tiled = _tiled(stock, tmp_path, "MODEL.MASKEXT.TILING.SIZE", "256")
    inputs = [{"image": image, "height": 300, "width": 375}]  # detector_postprocess rescales to these
    with torch.no_grad():
        expected, got = stock(inputs)[0]["instances"], tiled(inputs)[0]["instances"]
    assert len(expected) > 0 and got.image_size == (300, 375)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, expected.scores)
    assert torch.equal(got.pred_classes, expected.pred_classes)
    assert torch.equal(got.pred_masks, expected.pred_masks)


@pytest.fixture(scope="module")
def many_tiles(stock, image, tmp_path_factory):
    """Bit-mask and RLE outputs of the same tiled model on 9 tiles of 96 px, as DefaultPredictor-free calls."""
    tmp = tmp_path_factory.mktemp("tiles")
    opts = ("MODEL.MASKEXT.TILING.SIZE", "96", "MODEL.MASKEXT.TILING.OVERLAP", "0.25")
    inputs = [{"image": image, "height": 200, "width": 250}]
    with torch.no_grad():
        bits = _tiled(stock, tmp, *opts)(inputs)[0]["instances"]
        rles = _tiled(stock, tmp, *opts, "MODEL.MASKEXT.TILING.RLE_OUTPUT", "True")(inputs)[0]["instances"]
    return bits, rles


def test_outputs_are_bit_masks_or_rles_at_the_original_size(many_tiles):
    bits, rles = many_tiles
    assert len(bits) > 0 and bits.pred_masks.dtype == torch.bool and bits.pred_masks.shape[1:] == (200, 250)
    assert not rles.has("pred_masks") and len(rles.get(RLE_FIELD)) == len(rles) == len(bits)
    decoded = np.stack([mask_util.decode(r) for r in rles.get(RLE_FIELD)])
    assert np.array_equal(decoded.astype(bool), bits.pred_masks.numpy())
    assert (bits.scores[:-1] >= bits.scores[1:]).all()
    kept = rles[rles.scores > rles.scores.median()]  # Instances indexing keeps the RLEs in step
    assert len(kept.get(RLE_FIELD)) == len(kept) and kept.get(RLE_FIELD)[0] == rles.get(RLE_FIELD)[0]


def test_rle_outputs_reach_coco_results_as_bit_masks_do(many_tiles):
    """The evaluator and tools/predict.py write the same COCO segmentations from RLE output as from bit masks."""
    bits, rles = many_tiles
    from_bits, from_rles = instances_to_coco_results(bits, 7), instances_to_coco_results(rles, 7)
    assert len(from_rles) == len(from_bits) > 0
    for a, b in zip(from_bits, from_rles):
        assert b["image_id"] == 7 and b["category_id"] == a["category_id"] and b["score"] == a["score"]
        assert np.array_equal(mask_util.decode(a["segmentation"]), mask_util.decode(b["segmentation"]))
        json.dumps(b)


def test_tiles_run_under_bfloat16_and_channels_last(stock, image, many_tiles, tmp_path):
    """The fast settings compose with tiling: tiles go through the model's autocast, the merge gets float32."""
    bits = many_tiles[0]
    fast = ("MODEL.MASKEXT.PRECISION", "bfloat16", "MODEL.MASKEXT.CHANNELS_LAST", "True")
    opts = ("MODEL.MASKEXT.TILING.SIZE", "96", "MODEL.MASKEXT.TILING.OVERLAP", "0.25", *fast)
    with torch.no_grad():
        got = _tiled(stock, tmp_path, *opts)([{"image": image, "height": 200, "width": 250}])[0]["instances"]
    assert got.pred_masks.dtype == torch.bool and got.pred_masks.shape[1:] == (200, 250)
    assert got.scores.dtype == got.pred_boxes.tensor.dtype == torch.float32
    assert abs(len(got) - len(bits)) <= 0.1 * len(bits)
    assert set(got.pred_classes.tolist()) == set(bits.pred_classes.tolist())


def test_merge_holds_masks_as_box_crops_not_image_size_masks(stock, image, tmp_path):
    settings = TilingSettings(size=96, overlap=0.25)
    tiled = _tiled(stock, tmp_path, "MODEL.MASKEXT.TILING.SIZE", "96")
    with torch.no_grad():
        detections = detect_scene(tiled, image, (200, 250), settings)
    assert len(detections) > 50
    for d in detections:
        x0, y0, x1, y1 = d.box
        assert d.mask.dtype == bool and d.mask.shape[0] <= y1 - y0 + 4 and d.mask.shape[1] <= x1 - x0 + 4  # box widened by a pixel
        assert d.mask.shape[0] <= 96 and d.mask.shape[1] <= 96  # never larger than a tile
    assert sum(d.mask.nbytes for d in detections) < len(detections) * 96 * 96


def test_default_predictor_runs_tiled(stock, tmp_path):
    cfg = tiny_cfg(tmp_path, *BASE, "MODEL.MASKEXT.TILING.SIZE", "128", "MODEL.MASKEXT.TILING.BATCH_SIZE", "2")
    predictor = DefaultPredictor(cfg)
    predictor.model.load_state_dict(stock.state_dict())
    image = np.random.default_rng(1).integers(0, 256, (150, 300, 3), dtype=np.uint8)
    instances = predictor(image)["instances"]
    assert len(instances) > 0 and instances.pred_masks.shape[1:] == (150, 300)
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 2] <= 300).all() and (boxes[:, 3] <= 150).all()


def test_whole_image_pass_adds_only_objects_larger_than_the_overlap(stock, image, tmp_path):
    opts = ("MODEL.MASKEXT.TILING.SIZE", "96", "MODEL.MASKEXT.TILING.WHOLE_IMAGE_PASS", "True")
    settings = TilingSettings(size=96, overlap=0.2, whole_image_pass=True)
    with torch.no_grad():
        detections = detect_scene(_tiled(stock, tmp_path, *opts), image, (200, 250), settings)
    whole_pass = [d for d in detections if d.source < 0]
    assert all(max(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= 96 * 0.2 for d in whole_pass)
    assert all(d.window == (0, 0, 250, 200) for d in whole_pass)


def test_lazy_config_takes_tiling_as_a_model_argument(tmp_path):
    cfg = load_tiny_lazy(TINY_LAZY_CONFIG, tmp_path)
    cfg.model.tiling = L(TilingSettings)(size=128, overlap=0.25, rle_output=True)
    model = instantiate(cfg.model)
    assert model.tiling == TilingSettings(size=128, overlap=0.25, rle_output=True)


# ------------------------------------------------------------------------------------------- mosaics
def test_mosaic_places_val_images_and_their_masks_at_native_size():
    spec = BUILTIN_SYNTHETIC["maskext_synth_tiny_val"]
    scene, annotations = mosaic_scene(spec, (2, 3), first=spec.num_images - 1, image_id=7)
    s = spec.image_size
    assert scene.shape == (2 * s, 3 * s, 3) and {a["image_id"] for a in annotations} == {7}
    image, anns = generate_image(spec, 0)  # second cell: the split wraps around
    assert np.array_equal(scene[:s, s : 2 * s], image)
    first_cell = len(generate_image(spec, spec.num_images - 1)[1])
    placed = mask_util.decode(annotations[first_cell]["segmentation"])
    assert np.array_equal(placed[:s, s : 2 * s], anns[0]["mask"]) and placed.sum() == anns[0]["mask"].sum()
