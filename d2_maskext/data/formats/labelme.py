"""LabelMe JSON folders: one JSON per image with polygon, rectangle, circle and mask shapes.

Shapes sharing a label and a non-null ``group_id`` form one instance (as in LabelMe's ``labelme2coco``).
Rectangles become 4-corner polygons; circles (centre and a point on the rim) become polygons with LabelMe's
own vertex count, so a dataset of these shapes works with ``INPUT.MASK_FORMAT "polygon"`` as well as
"bitmask". A polygon whose shape flag ``hole`` is true (how ``tools/predict.py --output-format labelme``
writes holes, which LabelMe lacks) is cut out of its group's other shapes, and like a ``mask`` shape (a
base64 PNG of its box, LabelMe's AI-assisted masks) it makes its instance an exact RLE mask
(``INPUT.MASK_FORMAT "bitmask"``). ``point``, ``line`` and ``linestrip`` shapes have no area and are
reported and skipped.

LabelMe's own conventions: a ``labels.txt`` as ``thing_classes`` may start with ``__ignore__`` and
``_background_``, which are not classes; shapes labelled ``__ignore__`` become ignore regions (crowd: not
trained on, and predictions inside them are not counted by COCO evaluation), as ``labelme2voc`` treats them.
"""

from __future__ import annotations

import base64
import binascii
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...utils.image_io import ImageReadError, decode_label_png
from ...utils.polygons import HOLE_FLAG, rings_to_mask
from .base import (
    DatasetSource,
    LoadedDataset,
    NamedCategories,
    clean_polygons,
    dataset_format,
    expand_ignore_regions,
    ignore_region,
    is_finite_number,
    mask_annotation,
    polygon_annotation,
    read_class_names,
    read_json,
    resolve_inside_root,
)
from .problems import ProblemLog

SHAPE_TYPES = ("polygon", "rectangle", "circle", "mask")
IGNORE_LABEL = "__ignore__"
BACKGROUND_LABEL = "_background_"


@dataset_format("labelme")
def load_labelme(source: DatasetSource, problems: ProblemLog) -> LoadedDataset:
    folder = source.annotations
    if not folder.is_dir():
        problems.add("malformed", folder, "", "LabelMe annotations must be a folder of JSON files")
        return LoadedDataset([], [])
    given = labelme_class_names(read_class_names(source.thing_classes)) if source.thing_classes is not None else None
    categories = NamedCategories(given)
    records = []
    for path in tqdm(sorted(folder.rglob("*.json")), desc=f"loading {source.name}", unit="file", leave=False):
        record = _read_file(path, source, categories, problems)
        if record is not None:
            records.append(record)
    classes = categories.resolve(problems)
    expand_ignore_regions(records, len(classes))
    return LoadedDataset(records, classes)


def labelme_class_names(names: list[str]) -> list[str]:
    """Class names without LabelMe's special labels (``labels.txt`` starts with ``__ignore__``, ``_background_``)."""
    return [name for name in names if name not in (IGNORE_LABEL, BACKGROUND_LABEL)]


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
        where = f"shapes[{group[0][0]}] ({label[0]!r})"
        annotation = _instance_annotation(group, label[0], height, width, problems, path)
        if annotation is None:
            continue
        if label[0] == IGNORE_LABEL:
            annotations.append(ignore_region(annotation))
        else:
            categories.add(annotations, annotation, label[0], path, where)
    return {"file_name": str(image), "height": height, "width": width, "annotations": annotations}


def _instance_annotation(
    group: list[tuple[int, dict]], label: str, height: int, width: int, problems: ProblemLog, path: Path
) -> dict | None:
    """One instance from its shapes: polygons, or an RLE mask when a ``mask`` or hole shape is among them."""
    polygons, masks, holes = [], [], []
    for k, shape in group:
        where = f"shapes[{k}] ({label!r})"
        if shape.get("shape_type") == "mask":
            mask = _shape_mask(shape, height, width, problems, path, where)
            masks.extend([] if mask is None else [mask])
        elif _is_hole(shape):
            holes.extend(_shape_polygons(shape, height, width, problems, path, where) or [])
        else:
            polygons.extend(_shape_polygons(shape, height, width, problems, path, where) or [])
    where = f"shapes[{group[0][0]}] ({label!r})"
    if masks or holes:
        mask = rings_to_mask(polygons, holes, height, width)
        if masks:
            mask |= np.logical_or.reduce(masks)
        return mask_annotation(mask, -1, problems, path, where)
    return polygon_annotation(polygons, -1, height, width, problems, path, where) if polygons else None


def _is_hole(shape: dict) -> bool:
    flags = shape.get("flags")
    return isinstance(flags, dict) and flags.get(HOLE_FLAG) is True


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
        if shape["label"] == BACKGROUND_LABEL:
            problems.add("unsupported_shape", path, f"shapes[{k}]", f"label {BACKGROUND_LABEL!r} is LabelMe's background")
            continue
        group_id = shape.get("group_id")
        if _is_hole(shape) and group_id is None:
            problems.add("malformed", path, f"shapes[{k}]", "a hole shape needs the group_id of the instance it is cut from")
            continue
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


def _shape_mask(shape: dict, height: int, width: int, problems: ProblemLog, path: Path, where: str) -> np.ndarray | None:
    """A ``mask`` shape as an image-sized boolean mask: its PNG covers the box ``points`` (both corners
    inclusive, as LabelMe pastes it); parts outside the image are clipped and reported."""
    points = shape["points"]
    if len(points) != 2 or not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(is_finite_number(v) for v in p) for p in points):
        problems.add("malformed", path, where, "a mask shape needs 'points': the two corners [x, y] of its box")
        return None
    if not isinstance(shape.get("mask"), str):
        problems.add("malformed", path, where, "a mask shape needs 'mask': a base64 PNG of its box")
        return None
    try:
        crop = decode_label_png(base64.b64decode(shape["mask"], validate=True), f"{path} {where} 'mask'") > 0
    except (binascii.Error, ValueError) as e:
        problems.add("malformed", path, where, f"'mask' is not base64: {e}")
        return None
    except ImageReadError as e:
        problems.add("malformed", path, where, f"'mask' is not a PNG mask: {e.reason}")
        return None
    (x1, y1), (x2, y2) = ((int(x), int(y)) for x, y in points)
    if crop.shape != (y2 - y1 + 1, x2 - x1 + 1):
        problems.add(
            "size_mismatch", path, where,
            f"mask PNG is {crop.shape[1]}x{crop.shape[0]} but its box ({x1}, {y1})-({x2}, {y2}) is "
            f"{x2 - x1 + 1}x{y2 - y1 + 1}",
        )  # fmt: skip
        return None
    if x1 < 0 or y1 < 0 or x2 >= width or y2 >= height:
        problems.add("polygon_outside_image", path, where, f"mask box ({x1}, {y1})-({x2}, {y2}), image is {width}x{height}")
    mask = np.zeros((height, width), bool)
    top, left = max(y1, 0), max(x1, 0)
    bottom, right = min(y2 + 1, height), min(x2 + 1, width)
    if bottom > top and right > left:
        mask[top:bottom, left:right] = crop[top - y1 : bottom - y1, left - x1 : right - x1]
    return mask


def circle_polygon(center: list[float], rim: list[float]) -> list[float]:
    """LabelMe's circle-to-polygon conversion: enough vertices that the sagitta stays under one pixel."""
    (cx, cy), (rx, ry) = center, rim
    radius = math.hypot(rx - cx, ry - cy)
    n = max(int(math.pi / math.acos(1 - 1 / radius)), 12) if radius > 1 else 12
    angles = 2 * np.pi * np.arange(n) / n
    return np.stack([cx + radius * np.sin(angles), cy + radius * np.cos(angles)], axis=1).ravel().tolist()
