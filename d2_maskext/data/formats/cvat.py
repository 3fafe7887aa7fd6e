"""CVAT for images 1.1 XML (CVAT's ``annotations.xml`` export of a task or project).

``annotations`` is the XML file; each ``<image name=...>`` is found under the image root. Polygons, boxes
(``rotation`` included) and masks (CVAT's row-major RLE of a box) are instances; shapes of one image sharing a label and a
``group_id`` form one instance, and a polygon whose ``hole`` attribute is true (how ``tools/predict.py
--output-format cvat`` writes holes, which CVAT lacks) is cut out of its group. An instance with a mask or
a hole is an exact RLE mask (``INPUT.MASK_FORMAT "bitmask"``), others stay polygons. Polylines, points,
ellipses, cuboids, skeletons and tags have no mask and are reported and skipped, as are ``<track>``
elements (CVAT for *video* exports). Classes are ``thing_classes`` if given, else the labels of the
file's ``<meta>`` in their order, else the sorted labels found.

The file is parsed incrementally (each image dropped once read), so memory does not grow with its size.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...utils.polygons import HOLE_FLAG, rings_to_mask
from .base import (
    DatasetSource,
    LoadedDataset,
    NamedCategories,
    clean_polygons,
    dataset_format,
    declared_class_names,
    mask_annotation,
    polygon_annotation,
    resolve_inside_root,
)
from .problems import ProblemLog

AREA_SHAPES = ("polygon", "box", "mask")
OTHER_SHAPES = ("polyline", "points", "ellipse", "cuboid", "skeleton", "tag")
BOX_KEYS = (("xtl", ""), ("ytl", ""), ("xbr", ""), ("ybr", ""), ("rotation", "0"))


@dataset_format("cvat")
def load_cvat(source: DatasetSource, problems: ProblemLog) -> LoadedDataset:
    path = source.annotations
    if not path.is_file():
        problems.add("malformed", path, "", "CVAT annotations must be an XML file (CVAT for images 1.1)")
        return LoadedDataset([], [])
    given = declared_class_names(source)
    meta_labels: list[str] = []
    categories: NamedCategories | None = None
    records: list[dict] = []
    index = 0
    try:
        with tqdm(desc=f"loading {source.name}", unit="img", leave=False) as progress:
            for _, element in ET.iterparse(path, events=("end",)):
                if element.tag == "labels":
                    meta_labels.extend(_label_names(element))
                elif element.tag == "track":
                    where = f"track id={element.get('id')!r}"
                    problems.add("unsupported_shape", path, where, "tracks are CVAT for video; export as CVAT for images")
                    element.clear()
                elif element.tag == "image":
                    if categories is None:
                        categories = NamedCategories(given if given is not None else meta_labels or None)
                    record = _read_image(element, index, source, categories, problems)
                    records.extend([] if record is None else [record])
                    index += 1
                    element.clear()
                    progress.update()
    except ET.ParseError as e:
        problems.add("malformed", path, "", f"cannot parse XML: {e}")
        return LoadedDataset([], [])
    categories = categories or NamedCategories(given if given is not None else meta_labels or None)
    return LoadedDataset(records, categories.resolve(problems))


def _label_names(labels: ET.Element) -> list[str]:
    return [name.text or "" for label in labels.findall("label") for name in label.findall("name")]


def _read_image(
    element: ET.Element, index: int, source: DatasetSource, categories: NamedCategories, problems: ProblemLog
) -> dict | None:
    path = source.annotations
    name = element.get("name")
    where = f"image #{index} ({name!r})"
    try:
        width, height = int(element.get("width", "")), int(element.get("height", ""))
    except ValueError:
        width = height = 0
    if not name or width <= 0 or height <= 0:
        problems.add("malformed", path, where, "an image needs 'name' and positive integer 'width' and 'height'")
        return None
    image = resolve_inside_root(source, name, source.image_root, problems, path, where)
    if image is None:
        return None
    if not image.is_file():
        problems.add("missing_image", path, where, f"{image} does not exist")
        return None
    groups: dict[tuple, list[tuple[int, ET.Element]]] = {}
    for k, shape in enumerate(element):
        shape_where = f"{where} <{shape.tag}> #{k}"
        label = shape.get("label")
        if shape.tag in OTHER_SHAPES:
            problems.add("unsupported_shape", path, shape_where, f"a {shape.tag} has no mask")
            continue
        if shape.tag not in AREA_SHAPES or not label:
            problems.add("malformed", path, shape_where, f"expected one of {AREA_SHAPES + OTHER_SHAPES} with a 'label'")
            continue
        group_id = shape.get("group_id", "0")
        key = (label, group_id) if group_id not in ("", "0") else (label, None, k)
        groups.setdefault(key, []).append((k, shape))
    annotations: list[dict] = []
    for (label, *_), shapes in groups.items():
        shape_where = f"{where} <{shapes[0][1].tag}> #{shapes[0][0]} ({label!r})"
        annotation = _instance(shapes, height, width, problems, path, f"{where} ({label!r})")
        if annotation is not None:
            categories.add(annotations, annotation, label, path, shape_where)
    return {"file_name": str(image), "height": height, "width": width, "annotations": annotations}


def _instance(
    shapes: list[tuple[int, ET.Element]], height: int, width: int, problems: ProblemLog, path: Path, where: str
) -> dict | None:
    """One instance from its shapes: polygons, or an RLE mask when a mask or a hole is among them."""
    polygons, holes, masks = [], [], []
    for k, shape in shapes:
        shape_where = f"{where} <{shape.tag}> #{k}"
        if shape.tag == "mask":
            mask = _mask(shape, height, width, problems, path, shape_where)
            masks.extend([] if mask is None else [mask])
            continue
        flat = _polygon(shape, problems, path, shape_where)
        kept = clean_polygons([flat], height, width, problems, path, shape_where) if flat is not None else None
        target = holes if _is_hole(shape) else polygons
        target.extend(kept or [])
    if masks or holes:
        mask = rings_to_mask(polygons, holes, height, width)
        if masks:
            mask |= np.logical_or.reduce(masks)
        return mask_annotation(mask, -1, problems, path, where)
    return polygon_annotation(polygons, -1, height, width, problems, path, where) if polygons else None


def _is_hole(shape: ET.Element) -> bool:
    return any(a.get("name") == HOLE_FLAG and (a.text or "").strip().lower() == "true" for a in shape.findall("attribute"))


def _polygon(shape: ET.Element, problems: ProblemLog, path: Path, where: str) -> list[float] | None:
    """A polygon's ``points`` (``x,y;x,y;...``) or a box's corners as a flat list of floats."""
    try:
        if shape.tag == "box":
            x0, y0, x1, y1, degrees = (float(shape.get(k, default)) for k, default in BOX_KEYS)
            corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            return _rotated(corners, degrees).ravel().tolist()
        pairs = [pair.split(",") for pair in shape.get("points", "").split(";") if pair.strip()]
        if not all(len(pair) == 2 for pair in pairs):
            raise ValueError("points are not x,y pairs")
        return [float(v) for pair in pairs for v in pair]
    except ValueError as e:
        detail = "needs numbers xtl, ytl, xbr, ybr (and rotation)" if shape.tag == "box" else f"'points' must be 'x,y;x,y;...' ({e})"
        problems.add("malformed", path, where, detail)
        return None


def _rotated(corners: np.ndarray, degrees: float) -> np.ndarray:
    """Box corners turned ``degrees`` clockwise on screen (image y points down) about the box centre, as
    CVAT rotates boxes."""
    if not degrees:
        return corners
    angle = np.deg2rad(degrees)
    cos, sin = np.cos(angle), np.sin(angle)
    centre = corners.mean(axis=0)
    return (corners - centre) @ np.array([[cos, sin], [-sin, cos]]) + centre


def _mask(shape: ET.Element, height: int, width: int, problems: ProblemLog, path: Path, where: str) -> np.ndarray | None:
    """A CVAT mask (``rle``: run lengths, background first, row-major over its box) as an image-sized mask."""
    try:
        counts = np.array([int(v) for v in shape.get("rle", "").split(",")], np.int64)
        left, top, box_width, box_height = (int(shape.get(k, "")) for k in ("left", "top", "width", "height"))
    except ValueError:
        problems.add("malformed", path, where, "a mask needs integer 'rle' counts and 'left', 'top', 'width', 'height'")
        return None
    if box_width <= 0 or box_height <= 0 or (counts < 0).any() or counts.sum() != box_width * box_height:
        problems.add(
            "malformed", path, where,
            f"mask run lengths sum to {counts.sum()}, its {box_width}x{box_height} box has {box_width * box_height} pixels",
        )  # fmt: skip
        return None
    crop = np.repeat(np.arange(counts.size) % 2 == 1, counts).reshape(box_height, box_width)
    if left < 0 or top < 0 or left + box_width > width or top + box_height > height:
        problems.add(
            "polygon_outside_image", path, where, f"mask box at ({left}, {top}), {box_width}x{box_height}, image is {width}x{height}"
        )
    mask = np.zeros((height, width), bool)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + box_height, height), min(left + box_width, width)
    if y1 > y0 and x1 > x0:
        mask[y0:y1, x0:x1] = crop[y0 - top : y1 - top, x0 - left : x1 - left]
    return mask
