"""What the prediction writers share: predicted instances as polygons, and the flattening of instances with
several parts or holes into single polygons for tools that have no holes (LabelMe, CVAT)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...utils.polygons import PolygonPart, mask_to_polygons

# Douglas-Peucker distance, in pixels: rasterized back, the demo model's predictions keep a mean mask IoU
# over 0.95 (docs/predictions_out.md).
DEFAULT_POLYGON_TOLERANCE = 0.5
SCORE_DIGITS = 4


@dataclass(frozen=True)
class InstancePolygons:
    """One predicted instance: its class, dataset category id, score and polygons (pixel corners)."""

    class_name: str
    category_id: int
    score: float
    parts: list[PolygonPart]


@dataclass(frozen=True)
class ImagePolygons:
    """One image's predictions; ``name`` is its path relative to the input folder, ``path`` the file."""

    name: str
    path: Path
    height: int
    width: int
    instances: list[InstancePolygons]


@dataclass
class PolygonStats:
    """What polygonization left out: instances with no polygon left, parts and holes under ``min_area``."""

    skipped_instances: int = 0
    dropped_parts: int = 0
    dropped_holes: int = 0


def polygonize_instances(
    masks: Iterable[np.ndarray],
    classes: Sequence[int],
    scores: Sequence[float],
    class_names: Sequence[str],
    category_ids: Sequence[int],
    tolerance: float,
    min_area: float,
    stats: PolygonStats,
) -> list[InstancePolygons]:
    """Model masks (``H x W`` each) as instances with polygons; empty ones, or ones with every part under
    ``min_area``, are left out and counted in ``stats`` (never written as degenerate polygons)."""
    instances = []
    for mask, cls, score in zip(masks, classes, scores):
        result = mask_to_polygons(mask, tolerance, min_area)
        stats.dropped_parts += result.dropped_parts
        stats.dropped_holes += result.dropped_holes
        if not result.parts:
            stats.skipped_instances += 1
            continue
        instances.append(InstancePolygons(class_names[cls], category_ids[cls], round(float(score), SCORE_DIGITS), result.parts))
    return instances


@dataclass(frozen=True)
class FlatPolygon:
    """One ring written as a polygon of its own: ``group_id`` ties the rings of one instance together
    (None for an instance that is one ring), ``hole`` marks a ring cut out of the instance."""

    instance: InstancePolygons
    points: np.ndarray
    group_id: int | None
    hole: bool


def flat_polygons(instances: Sequence[InstancePolygons]) -> Iterator[FlatPolygon]:
    """Every ring of every instance, with group ids 1, 2, ... for instances of several rings."""
    next_group = 1
    for instance in instances:
        several = len(instance.parts) > 1 or any(part.holes for part in instance.parts)
        group_id = next_group if several else None
        next_group += several
        for part in instance.parts:
            yield FlatPolygon(instance, part.exterior, group_id, False)
            for hole in part.holes:
                yield FlatPolygon(instance, hole, group_id, True)


def output_path(folder: Path, image_name: str, suffix: str) -> Path:
    """``folder / image_name`` with ``suffix`` instead of the image's extension, its folder created."""
    path = (folder / image_name).with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def relative_image_path(image: Path, from_folder: Path) -> str:
    """``image`` relative to ``from_folder`` with forward slashes (how annotation files refer to images)."""
    return Path(os.path.relpath(image.resolve(), from_folder.resolve())).as_posix()


def rounded_points(points: np.ndarray) -> list[list[float]]:
    """Polygon points for JSON: pixel-corner coordinates are multiples of 0.5 before simplification, and
    three decimals keep any simplified point well under a pixel's precision."""
    return np.round(points, 3).tolist()
