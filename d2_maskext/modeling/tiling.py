"""Tiled inference of ``MaskExtRCNN`` on scenes far larger than the network's input size.

A large image is cut into overlapping tiles at full resolution, tiles run through the backbone, proposal
generator and ROI heads in batches, and detections are merged across tiles by mask overlap. Each detection
keeps its mask as a boolean crop of its box in scene coordinates, so memory grows with the number of
objects times their size (plus one batch of tiles), never with the image area times the number of objects.

Merge rule: detections of the same class from different tiles are one object when their masks overlap
(IoU or intersection over the smaller mask, counted only where both tiles saw the scene) by at least the
threshold. A tile's prediction at its cut edge is the least reliable one, so a merged object takes the mask
and box of its best-scoring member that no inner tile border cuts; when every member is cut (an object
larger than the overlap), its mask is the union of the pieces and its box is recomputed from that union.
The score is the best member's. An object seen only cut whose pixels another tile sees as part of a whole
object (of any class: half an object often looks like another class) is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn
from tqdm import tqdm

from ..layers.paste_masks import paste_masks
from ..utils.rle import RLE_FIELD, runs_to_rle

__all__ = [
    "RLEMasks",
    "TiledDetection",
    "TilingSettings",
    "check_tile_size",
    "crop_to_rle",
    "detect_scene",
    "merge_detections",
    "merge_scene",
    "tile_grid",
    "tiled_inference",
    "tiling_from_config",
]

MERGE_METRICS = ("iou", "ios")
PROGRESS_MIN_TILES = 16  # images with more tiles than this show a progress bar
BORDER_MARGIN = 2.0  # output pixels: a box this close to an inner tile border is cut by it


@dataclass(frozen=True)
class TilingSettings:
    """``MODEL.MASKEXT.TILING``: how a scene is cut into tiles and how detections are merged."""

    size: int
    overlap: float = 0.2
    min_size_test: int = 0
    max_size_test: int = 0
    batch_size: int = 4
    whole_image_pass: bool = False
    merge_metric: str = "ios"
    merge_threshold: float = 0.5
    max_detections: int = 1000
    rle_output: bool = False

    def __post_init__(self) -> None:
        checks = {
            "SIZE": self.size > 0,
            "OVERLAP": 0.0 <= self.overlap < 1.0,
            "MIN_SIZE_TEST": self.min_size_test >= 0,
            "MAX_SIZE_TEST": self.max_size_test >= 0,
            "BATCH_SIZE": self.batch_size >= 1,
            "MERGE_METRIC": self.merge_metric in MERGE_METRICS,
            "MERGE_THRESHOLD": 0.0 < self.merge_threshold <= 1.0,
            "MAX_DETECTIONS": self.max_detections >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                value = getattr(self, key.lower())
                raise ValueError(
                    f"MODEL.MASKEXT.TILING.{key}: invalid value {value!r} (SIZE > 0, 0 <= OVERLAP < 1, sizes >= 0, "
                    f"BATCH_SIZE >= 1, MERGE_METRIC in {MERGE_METRICS}, 0 < MERGE_THRESHOLD <= 1, MAX_DETECTIONS >= 1)"
                )

    @property
    def stride(self) -> int:
        """Distance between neighbouring tiles, in input pixels."""
        return max(1, self.size - round(self.size * self.overlap))


def tiling_from_config(cfg) -> TilingSettings | None:
    """``MODEL.MASKEXT.TILING`` as settings (None when ``SIZE`` is 0); tiles are cut from the full-resolution
    image, so ``INPUT.MIN_SIZE_TEST`` must be 0 (the test loader's resize turned off)."""
    t = cfg.MODEL.MASKEXT.TILING
    if t.SIZE == 0:
        return None
    if cfg.INPUT.MIN_SIZE_TEST != 0:
        raise ValueError(
            f"MODEL.MASKEXT.TILING.SIZE is {t.SIZE}, which cuts tiles from the full-resolution image: set "
            f"INPUT.MIN_SIZE_TEST to 0 (it is {cfg.INPUT.MIN_SIZE_TEST}, which would resize the whole image first); "
            "TILING.MIN_SIZE_TEST / TILING.MAX_SIZE_TEST resize each tile"
        )
    return TilingSettings(**{key.lower(): value for key, value in t.items()})  # fields are the keys, lower-case


def check_tile_size(settings: TilingSettings, backbone: nn.Module) -> None:
    """Refuse tiles smaller than the backbone's coarsest feature stride or its size divisibility."""
    strides = [spec.stride for spec in backbone.output_shape().values()]
    minimum = max([*strides, int(getattr(backbone, "size_divisibility", 0) or 0)])
    tile = min(settings.size, settings.min_size_test or settings.size)
    if tile < minimum:
        raise ValueError(
            f"MODEL.MASKEXT.TILING.SIZE (or TILING.MIN_SIZE_TEST): tiles of {tile} px are smaller than the "
            f"backbone's largest stride / size divisibility ({minimum} px)"
        )


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    count = math.ceil((length - size) / stride) + 1
    return [min(i * stride, length - size) for i in range(count)]


def tile_grid(height: int, width: int, size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` tiles of side ``size`` (the image's side where it is smaller) covering the image,
    neighbours overlapping by at least ``overlap * size`` pixels; edge tiles are moved inward, not shrunk."""
    stride = TilingSettings(size=size, overlap=overlap).stride
    return [
        (x, y, min(x + size, width), min(y + size, height))
        for y in _starts(height, size, stride)
        for x in _starts(width, size, stride)
    ]


# ------------------------------------------------------------------------------------------------ merging
@dataclass(eq=False)
class TiledDetection:
    """One detection of one tile, in output-image coordinates; ``mask`` covers rows ``y0:y0+h``, columns
    ``x0:x0+w`` of the image (its box widened by a pixel, clipped to its tile)."""

    box: tuple[float, float, float, float]
    score: float
    category: int
    source: int  # tile index; detections of one tile are never merged with each other
    window: tuple[int, int, int, int]  # the part of the image its tile saw
    whole: bool  # no inner tile border cuts its box
    x0: int
    y0: int
    mask: np.ndarray  # bool, (h, w)

    @property
    def extent(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x0 + self.mask.shape[1], self.y0 + self.mask.shape[0]

    def crop(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The mask over image region ``[x0, x1) x [y0, y1)`` intersected with its extent."""
        ex0, ey0, ex1, ey1 = self.extent
        return self.mask[max(y0, ey0) - ey0 : max(min(y1, ey1) - ey0, 0), max(x0, ex0) - ex0 : max(min(x1, ex1) - ex0, 0)]


def _intersect(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int, int, int]:
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def mask_overlap(a: TiledDetection, b: TiledDetection, metric: str) -> float:
    """IoU or intersection over the smaller mask of ``a`` and ``b``, counted where both tiles saw the scene."""
    seen = _intersect(a.window, b.window)
    common = _intersect(_intersect(a.extent, b.extent), seen)
    if common[2] <= common[0] or common[3] <= common[1]:
        return 0.0
    inter = int(np.count_nonzero(a.crop(*common) & b.crop(*common)))
    if inter == 0:
        return 0.0
    area_a = int(np.count_nonzero(a.crop(*seen)))
    area_b = int(np.count_nonzero(b.crop(*seen)))
    if metric == "ios":
        return inter / min(area_a, area_b)
    return inter / (area_a + area_b - inter)


@dataclass(eq=False)
class _Cluster:
    members: list[TiledDetection]
    sources: set[int] = field(default_factory=set)

    @property
    def best(self) -> TiledDetection:
        return self.members[0]


class _SpatialIndex:
    """Clusters by the grid cells their members' extents cover, so a lookup costs the neighbourhood only."""

    def __init__(self, cell: int) -> None:
        self.cell = max(1, cell)
        self.cells: dict[tuple[int, int], list[_Cluster]] = {}

    def _keys(self, extent: tuple[int, int, int, int]) -> Iterator[tuple[int, int]]:
        c = self.cell
        for gy in range(extent[1] // c, (max(extent[3], extent[1] + 1) - 1) // c + 1):
            for gx in range(extent[0] // c, (max(extent[2], extent[0] + 1) - 1) // c + 1):
                yield gx, gy

    def add(self, cluster: _Cluster, extent: tuple[int, int, int, int]) -> None:
        for key in self._keys(extent):
            bucket = self.cells.setdefault(key, [])
            if not bucket or bucket[-1] is not cluster:
                bucket.append(cluster)

    def near(self, extent: tuple[int, int, int, int]) -> list[_Cluster]:
        found: dict[int, _Cluster] = {}
        for key in self._keys(extent):
            for cluster in self.cells.get(key, ()):
                found.setdefault(id(cluster), cluster)
        return list(found.values())


def merge_detections(
    detections: list[TiledDetection], metric: str, threshold: float, cell: int
) -> list[list[TiledDetection]]:
    """Group detections into objects, greedily by decreasing score (see the module docstring); each group
    lists its members best first. ``cell`` is the spatial index's cell side in pixels (the tile stride)."""
    index = _SpatialIndex(cell)
    clusters: list[_Cluster] = []
    for det in sorted(detections, key=lambda d: -d.score):
        best, best_overlap = None, threshold
        for cluster in index.near(det.extent):
            if cluster.best.category != det.category or det.source in cluster.sources:
                continue
            overlap = max(mask_overlap(det, member, metric) for member in cluster.members)
            if overlap >= best_overlap:
                best, best_overlap = cluster, overlap
        if best is None:
            best = _Cluster([])
            clusters.append(best)
        best.members.append(det)
        best.sources.add(det.source)
        index.add(best, det.extent)
    return [c.members for c in clusters if not _seen_whole_elsewhere(c, index, metric, threshold)]


def _seen_whole_elsewhere(cluster: _Cluster, index: _SpatialIndex, metric: str, threshold: float) -> bool:
    """Whether every member of ``cluster`` is cut by a tile border and another tile sees the same pixels as
    part of a whole object of any class (a half-seen object the head took for another class)."""
    if any(m.whole for m in cluster.members):
        return False
    for member in cluster.members:
        for other in index.near(member.extent):
            if other is cluster:
                continue
            for view in other.members:
                if view.whole and view.source != member.source and mask_overlap(member, view, metric) >= threshold:
                    return True
    return False


def _union(members: list[TiledDetection]) -> tuple[int, int, np.ndarray]:
    x0 = min(m.x0 for m in members)
    y0 = min(m.y0 for m in members)
    x1 = max(m.extent[2] for m in members)
    y1 = max(m.extent[3] for m in members)
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for m in members:
        h, w = m.mask.shape
        mask[m.y0 - y0 : m.y0 - y0 + h, m.x0 - x0 : m.x0 - x0 + w] |= m.mask
    return x0, y0, mask


def _mask_box(x0: int, y0: int, mask: np.ndarray) -> tuple[float, float, float, float] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1)


def resolve_object(members: list[TiledDetection]) -> TiledDetection:
    """One detection for a merged object: the best uncut member's mask and box, or the union of the pieces
    (box recomputed from it) when every member is cut; the best score either way."""
    whole = [m for m in members if m.whole]
    if len(members) == 1 or whole:
        chosen = whole[0] if whole else members[0]
        return TiledDetection(
            chosen.box, members[0].score, chosen.category, chosen.source, chosen.window, chosen.whole,
            chosen.x0, chosen.y0, chosen.mask,
        )
    x0, y0, mask = _union(members)
    boxes = np.array([m.box for m in members])
    box = _mask_box(x0, y0, mask) or (*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist())
    seen = members[0].window
    for m in members[1:]:
        seen = (min(seen[0], m.window[0]), min(seen[1], m.window[1]), max(seen[2], m.window[2]), max(seen[3], m.window[3]))
    return TiledDetection(box, members[0].score, members[0].category, members[0].source, seen, False, x0, y0, mask)


# -------------------------------------------------------------------------------------------- RLE output
def crop_to_rle(mask: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """Compressed COCO RLE (``counts`` as a string) of ``mask`` placed at ``(x0, y0)`` in a ``height x width``
    image, built from the crop's own pixels: no image-size array is ever allocated."""
    xs, ys = np.nonzero(mask.T)  # column-major order, as COCO RLE runs
    flat = (xs.astype(np.int64) + x0) * height + (ys.astype(np.int64) + y0)
    if flat.size == 0:
        return runs_to_rle(flat, flat, height, width)
    breaks = np.flatnonzero(np.diff(flat) != 1)
    starts = flat[np.concatenate([[0], breaks + 1])]
    ends = flat[np.append(breaks, flat.size - 1)] + 1
    return runs_to_rle(starts, ends, height, width)


class RLEMasks:
    """Per-instance compressed COCO RLEs (``Instances`` field ``pred_masks_rle``), indexable like a tensor."""

    def __init__(self, rles: list[dict]) -> None:
        self.rles = rles

    def __len__(self) -> int:
        return len(self.rles)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rles)

    def __getitem__(self, item) -> RLEMasks | dict:
        if isinstance(item, int):
            return self.rles[item]
        if isinstance(item, slice):
            return RLEMasks(self.rles[item])
        index = torch.as_tensor(item)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return RLEMasks([self.rles[i] for i in index.tolist()])

    def to(self, *args, **kwargs) -> RLEMasks:
        return self


# -------------------------------------------------------------------------------------------- inference
def _resize(image: Tensor, height: int, width: int, interpolation: int) -> Tensor:
    """``(C, h, w)`` image resized with OpenCV (``interpolation``), keeping its dtype."""
    hwc = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    out = cv2.resize(hwc, (width, height), interpolation=interpolation)
    out = out.reshape(height, width, -1)
    return torch.from_numpy(out).permute(2, 0, 1)


def _detect(model: nn.Module, images: list[Tensor]) -> list[Instances]:
    """Backbone, proposal generator and ROI heads of ``model`` on ``images``, under its compute settings;
    boxes in each image's pixels, ``pred_masks`` as ``(N, 1, M, M)`` probabilities."""
    with model._autocast():
        batch = model.preprocess_image([{"image": image} for image in images])
        features = model.backbone(batch.tensor)
        proposals, _ = model.proposal_generator(batch, features, None)
        results, _ = model.roi_heads(batch, features, proposals, None)
    return results


@dataclass(frozen=True)
class _Tile:
    source: int
    window: tuple[int, int, int, int]  # input-tensor pixels
    resized: tuple[int, int] | None  # (h, w) it runs at, None = as cut


class _Scene:
    """One input image and the mapping from its tensor's pixels to the output's (``height``/``width``)."""

    def __init__(self, image: Tensor, out_size: tuple[int, int]) -> None:
        self.image = image
        self.height, self.width = int(image.shape[-2]), int(image.shape[-1])
        self.out_size = out_size
        self.sx = out_size[1] / self.width
        self.sy = out_size[0] / self.height

    def out_window(self, window: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = window
        return round(x0 * self.sx), round(y0 * self.sy), round(x1 * self.sx), round(y1 * self.sy)

    def inner_edges(self, window: tuple[int, int, int, int]) -> tuple[bool, bool, bool, bool]:
        """Which sides of a tile are inner borders (not the image's own edges)."""
        x0, y0, x1, y1 = window
        return x0 > 0, y0 > 0, x1 < self.width, y1 < self.height


def _tiles(scene: _Scene, settings: TilingSettings) -> list[_Tile]:
    tiles = []
    for i, window in enumerate(tile_grid(scene.height, scene.width, settings.size, settings.overlap)):
        resized = None
        if settings.min_size_test:
            h, w = window[3] - window[1], window[2] - window[0]
            resized = ResizeShortestEdge.get_output_shape(h, w, settings.min_size_test, settings.max_size_test or 10**9)
            resized = None if resized == (h, w) else resized
        tiles.append(_Tile(i, window, resized))
    return tiles


def _whole_image_tile(scene: _Scene, settings: TilingSettings) -> _Tile:
    scale = min(1.0, settings.size / max(scene.height, scene.width))
    resized = (max(1, round(scene.height * scale)), max(1, round(scene.width * scale)))
    return _Tile(-1, (0, 0, scene.width, scene.height), None if scale == 1.0 else resized)


def _tile_image(scene: _Scene, tile: _Tile) -> Tensor:
    x0, y0, x1, y1 = tile.window
    crop = scene.image[:, y0:y1, x0:x1]
    if tile.resized is None:
        return crop
    shrink = tile.resized[0] < (y1 - y0)
    return _resize(crop, *tile.resized, cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _to_detections(
    scene: _Scene, tile: _Tile, result: Instances, settings: TilingSettings
) -> list[TiledDetection]:
    """A tile's instances in output coordinates, each mask pasted into its own box crop."""
    if len(result) == 0:
        return []
    x0, y0, x1, y1 = tile.window
    th, tw = tile.resized or (y1 - y0, x1 - x0)
    fx, fy = (x1 - x0) / tw * scene.sx, (y1 - y0) / th * scene.sy
    boxes = result.pred_boxes.tensor.float() * torch.tensor([fx, fy, fx, fy])
    boxes += torch.tensor([x0 * scene.sx, y0 * scene.sy, x0 * scene.sx, y0 * scene.sy])
    window = scene.out_window(tile.window)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(window[0], window[2])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(window[1], window[3])
    probs = result.pred_masks[:, 0].float()
    scores = result.scores.float().tolist()
    classes = result.pred_classes.tolist()
    inner = scene.inner_edges(tile.window)
    min_side = settings.size * settings.overlap * max(scene.sx, scene.sy)
    detections = []
    for i, box in enumerate(boxes.tolist()):
        if tile.source < 0 and max(box[2] - box[0], box[3] - box[1]) < min_side:
            continue  # the whole-image pass only contributes objects no tile can hold whole
        # The paste region of paste_masks (the box widened by a pixel), clipped to the tile.
        cx0 = max(math.floor(box[0]) - 1, window[0])
        cy0 = max(math.floor(box[1]) - 1, window[1])
        cx1 = min(math.ceil(box[2]) + 1, window[2])
        cy1 = min(math.ceil(box[3]) + 1, window[3])
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        local = torch.tensor([[box[0] - cx0, box[1] - cy0, box[2] - cx0, box[3] - cy0]])
        mask = paste_masks(probs[i : i + 1], local, (cy1 - cy0, cx1 - cx0))[0].numpy()
        cut = (
            (inner[0] and box[0] - window[0] < BORDER_MARGIN)
            or (inner[1] and box[1] - window[1] < BORDER_MARGIN)
            or (inner[2] and window[2] - box[2] < BORDER_MARGIN)
            or (inner[3] and window[3] - box[3] < BORDER_MARGIN)
        )
        detections.append(
            TiledDetection(tuple(box), scores[i], classes[i], tile.source, window, not cut, cx0, cy0, mask)
        )
    return detections


def _to_instances(objects: list[TiledDetection], out_size: tuple[int, int], rle_output: bool) -> Instances:
    height, width = out_size
    result = Instances(out_size)
    boxes = torch.tensor([o.box for o in objects], dtype=torch.float32).reshape(-1, 4)
    result.pred_boxes = Boxes(boxes)
    result.scores = torch.tensor([o.score for o in objects], dtype=torch.float32)
    result.pred_classes = torch.tensor([o.category for o in objects], dtype=torch.int64)
    if rle_output:
        result.set(RLE_FIELD, RLEMasks([crop_to_rle(o.mask, o.x0, o.y0, height, width) for o in objects]))
    else:
        masks = torch.zeros((len(objects), height, width), dtype=torch.bool)
        for i, o in enumerate(objects):
            h, w = o.mask.shape
            masks[i, o.y0 : o.y0 + h, o.x0 : o.x0 + w] = torch.from_numpy(o.mask)
        result.pred_masks = masks
    return result


def detect_scene(
    model: nn.Module, image: Tensor, out_size: tuple[int, int], settings: TilingSettings
) -> list[TiledDetection]:
    """Every tile's detections of one ``(C, H, W)`` image, in ``out_size`` coordinates, before merging."""
    scene = _Scene(image, out_size)
    tiles = _tiles(scene, settings)
    if settings.whole_image_pass and len(tiles) > 1:
        tiles.append(_whole_image_tile(scene, settings))
    detections: list[TiledDetection] = []
    with tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False, disable=len(tiles) <= PROGRESS_MIN_TILES) as bar:
        for start in range(0, len(tiles), settings.batch_size):
            batch = tiles[start : start + settings.batch_size]
            results = _detect(model, [_tile_image(scene, t) for t in batch])
            for tile, result in zip(batch, results):
                detections.extend(_to_detections(scene, tile, result, settings))
            bar.update(len(batch))
    return detections


def merge_scene(detections: list[TiledDetection], settings: TilingSettings, cell: int) -> list[TiledDetection]:
    """One detection per object, best score first, at most ``MAX_DETECTIONS``; ``cell``: the tile stride in
    output pixels."""
    groups = merge_detections(detections, settings.merge_metric, settings.merge_threshold, cell)
    objects = sorted((resolve_object(g) for g in groups), key=lambda o: -o.score)
    return [o for o in objects if o.box[2] > o.box[0] and o.box[3] > o.box[1]][: settings.max_detections]


def tiled_inference(
    model: nn.Module, batched_inputs: list[dict], settings: TilingSettings, do_postprocess: bool = True
) -> list[Instances] | list[dict[str, Instances]]:
    """``model.inference`` by tiles: one merged ``Instances`` per image, at its ``height``/``width`` (the
    tensor's size without ``do_postprocess``), with ``pred_masks`` (bool) or ``pred_masks_rle``."""
    outputs = []
    for inputs in batched_inputs:
        image = inputs["image"]
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if do_postprocess:
            size = (int(inputs.get("height", size[0])), int(inputs.get("width", size[1])))
        detections = detect_scene(model, image, size, settings)
        scale = max(size[0] / image.shape[-2], size[1] / image.shape[-1])
        objects = merge_scene(detections, settings, round(settings.stride * scale))
        result = _to_instances(objects, size, settings.rle_output)
        outputs.append({"instances": result} if do_postprocess else result)
    return outputs
