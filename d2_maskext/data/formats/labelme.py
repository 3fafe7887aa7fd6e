"""LabelMe JSON folders: one JSON per image with polygon, rectangle and circle shapes.

Shapes sharing a label and a non-null ``group_id`` form one instance (as in LabelMe's ``labelme2coco``).
Rectangles become 4-corner polygons; circles (centre and a point on the rim) become polygons with LabelMe's
own vertex count, so every LabelMe dataset works with ``INPUT.MASK_FORMAT "polygon"`` as well as "bitmask".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .base import (
    DatasetSource,
    LoadedDataset,
    NamedCategories,
    clean_polygons,
    dataset_format,
    is_finite_number,
    polygon_annotation,
    read_class_names,
    read_json,
    resolve_inside_root,
)
from .problems import ProblemLog

SHAPE_TYPES = ("polygon", "rectangle", "circle")


@dataset_format("labelme")
def load_labelme(source: DatasetSource, problems: ProblemLog) -> LoadedDataset:
    folder = source.annotations
    if not folder.is_dir():
        problems.add("malformed", folder, "", "LabelMe annotations must be a folder of JSON files")
        return LoadedDataset([], [])
    given = read_class_names(source.thing_classes) if source.thing_classes is not None else None
    categories = NamedCategories(given)
    records = []
    for path in tqdm(sorted(folder.rglob("*.json")), desc=f"loading {source.name}", unit="file", leave=False):
        record = _read_file(path, source, categories, problems)
        if record is not None:
            records.append(record)
    return LoadedDataset(records, categories.resolve(problems))


def _read_file(path: Path, source: DatasetSource, categories: NamedCategories, problems: ProblemLog) -> dict | None:
    data = read_json(path, problems)
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("imagePath"), str) or not isinstance(data.get("shapes"), list):
        problems.add("malformed", path, "", "expected an object with 'imagePath' (string) and 'shapes' (list)")
        return None
    height, width = data.get("imageHeight"), data.get("imageWidth")
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        problems.add("malformed", path, "", "expected positive integers 'imageHeight' and 'imageWidth'")
        return None
    # LabelMe written on Windows uses backslashes.
    image = resolve_inside_root(source, data["imagePath"].replace("\\", "/"), path.parent, problems, path, "imagePath")
    if image is None:
        return None
    if not image.is_file():
        problems.add("missing_image", path, "imagePath", f"{image} does not exist")
        return None
    annotations: list[dict] = []
    for label, group in _instances(data["shapes"], path, problems).items():
        polygons = []
        for k, shape in group:
            polygons.extend(_shape_polygons(shape, height, width, problems, path, f"shapes[{k}] ({label[0]!r})") or [])
        where = f"shapes[{group[0][0]}] ({label[0]!r})"
        annotation = polygon_annotation(polygons, -1, height, width, problems, path, where) if polygons else None
        if annotation is not None:
            categories.add(annotations, annotation, label[0], path, where)
    return {"file_name": str(image), "height": height, "width": width, "annotations": annotations}


def _instances(shapes: list, path: Path, problems: ProblemLog) -> dict[tuple, list[tuple[int, dict]]]:
    """Shapes grouped into instances: ``(label, group_id)`` for grouped shapes, ``(label, None, index)`` otherwise."""
    instances: dict[tuple, list[tuple[int, dict]]] = {}
    for k, shape in enumerate(shapes):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or not isinstance(shape.get("points"), list):
            problems.add("malformed", path, f"shapes[{k}]", "a shape needs a string 'label' and a list 'points'")
            continue
        shape_type = shape.get("shape_type") or "polygon"
        if shape_type not in SHAPE_TYPES:
            problems.add("unsupported_shape", path, f"shapes[{k}]", f"shape_type {shape_type!r} is not one of {SHAPE_TYPES}")
            continue
        group_id = shape.get("group_id")
        key = (shape["label"], group_id) if group_id is not None else (shape["label"], None, k)
        instances.setdefault(key, []).append((k, shape))
    return instances


def _shape_polygons(shape: dict, height: int, width: int, problems: ProblemLog, path: Path, where: str) -> list | None:
    points = shape["points"]
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(is_finite_number(v) for v in p) for p in points):
        problems.add("malformed", path, where, "points must be [x, y] pairs of finite numbers")
        return None
    shape_type = shape.get("shape_type") or "polygon"
    if shape_type == "polygon":
        flat = [v for p in points for v in p]
    elif len(points) != 2:
        problems.add("malformed", path, where, f"a {shape_type} needs exactly 2 points, got {len(points)}")
        return None
    elif shape_type == "rectangle":
        (xa, ya), (xb, yb) = points
        flat = [xa, ya, xb, ya, xb, yb, xa, yb]
    else:
        flat = circle_polygon(points[0], points[1])
    return clean_polygons([flat], height, width, problems, path, where)


def circle_polygon(center: list[float], rim: list[float]) -> list[float]:
    """LabelMe's circle-to-polygon conversion: enough vertices that the sagitta stays under one pixel."""
    (cx, cy), (rx, ry) = center, rim
    radius = math.hypot(rx - cx, ry - cy)
    n = max(int(math.pi / math.acos(1 - 1 / radius)), 12) if radius > 1 else 12
    angles = 2 * np.pi * np.arange(n) / n
    return np.stack([cx + radius * np.sin(angles), cy + radius * np.cos(angles)], axis=1).ravel().tolist()
