"""YOLO labels: one ``.txt`` per image, lines ``class x1 y1 x2 y2 ...`` (segmentation) normalized to [0, 1].

The label of ``<image_root>/a/b.jpg`` is ``<annotations>/a/b.txt``; class names come from ``thing_classes``
(a list, a names file with one name per line, or a YOLO ``data.yaml``). Images without a label file are
images without annotations. A detection line ``class cx cy w h`` is a box without a mask: in a dataset with
polygons it is reported (``missing_segmentation``) and dropped, in a detection-only dataset it is kept.

``annotations`` may instead be the ``data.yaml`` itself, with ``split`` naming one of its keys (``train``,
``val``, ``test``): the split's image folder is ``path`` (relative to the YAML's folder; default that folder)
joined with the split's value, its labels folder is the same path with the last ``images`` part replaced by
``labels`` (YOLO's convention), and the classes are its ``names``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml
from detectron2.structures import BoxMode
from tqdm import tqdm

from .base import (
    DatasetSource,
    LoadedDataset,
    checked_image_size,
    clean_polygons,
    dataset_format,
    images_with_annotations,
    polygon_annotation,
    read_class_names,
)
from .problems import DatasetError, ProblemLog

YAML_SUFFIXES = (".yaml", ".yml")


def is_data_yaml(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in YAML_SUFFIXES


def resolve_data_yaml(path: Path, split: str | None) -> tuple[Path, Path]:
    """``(image folder, labels folder)`` of ``split`` in a YOLO ``data.yaml``; errors name the file and key."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: cannot read the YOLO data.yaml: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with 'path', 'train', 'val' and 'names'")
    splits = [k for k in ("train", "val", "test") if isinstance(data.get(k), str)]
    if split not in splits:
        raise DatasetError(f"{path}: split {split!r} is not one of its image folders {splits}; set 'split'")
    root = path.parent / data.get("path", "")
    images = root / data[split]
    if images.suffix.lower() == ".txt":
        raise DatasetError(f"{path}: '{split}: {data[split]}' is an image list; only image folders are supported")
    parts = list(images.parts)
    if "images" not in parts:
        raise DatasetError(f"{path}: '{split}: {data[split]}' has no 'images' folder to derive the labels folder from")
    last = len(parts) - 1 - parts[::-1].index("images")
    return images, Path(*parts[:last], "labels", *parts[last + 1 :])


@dataset_format("yolo")
def load_yolo(source: DatasetSource, problems: ProblemLog) -> LoadedDataset:
    if source.thing_classes is None:
        raise DatasetError(f"dataset '{source.name}': YOLO labels carry class indices only; pass thing_classes "
                           "(a list, a names file or the data.yaml)")
    names = read_class_names(source.thing_classes)
    labels = source.annotations
    if not labels.is_dir():
        problems.add("malformed", labels, "", "YOLO annotations must be the labels folder")
        return LoadedDataset([], names)
    names_file = os.path.abspath(source.thing_classes) if isinstance(source.thing_classes, Path) else None
    files = [p for p in labels.rglob("*.txt") if os.path.abspath(p) != names_file]
    pairs = images_with_annotations(source, problems, files, lambda p: p.relative_to(labels).with_suffix(""))
    records, box_only = [], []
    for image, label_files in tqdm(pairs, desc=f"loading {source.name}", unit="img", leave=False):
        size = checked_image_size(image, problems)
        if size is None:
            continue
        height, width = size
        annotations = []
        for label_file in label_files:
            for annotation, where in _read_labels(label_file, names, height, width, problems):
                annotations.append(annotation)
                if "segmentation" not in annotation:
                    box_only.append((annotations, annotation, label_file, where))
        records.append({"file_name": str(image), "height": height, "width": width, "annotations": annotations})
    if len(box_only) < sum(len(r["annotations"]) for r in records):  # polygons present: boxes cannot train masks
        for siblings, annotation, label_file, where in box_only:
            problems.add("missing_segmentation", label_file, where,
                         "detection line 'class cx cy w h': a box without a polygon")
            siblings[:] = [a for a in siblings if a is not annotation]
    return LoadedDataset(records, names)


def _read_labels(path: Path, names: list[str], height: int, width: int, problems: ProblemLog) -> list[tuple[dict, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        problems.add("malformed", path, "", f"cannot read labels: {e}")
        return []
    annotations = []
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"line {number}"
        try:
            category = int(tokens[0])
            coords = [float(t) for t in tokens[1:]]
        except ValueError:
            problems.add("malformed", path, where, f"expected 'class x1 y1 x2 y2 ...', got {line.strip()!r}")
            continue
        if not 0 <= category < len(names):
            problems.add("unknown_category", path, where, f"class index {category} is not in 0..{len(names) - 1}")
            continue
        if len(coords) == 4:
            annotation = _box_annotation(coords, category, height, width, problems, path, where)
        else:
            scaled = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coords)]
            polygons = clean_polygons([scaled], height, width, problems, path, where)
            annotation = polygons and polygon_annotation(polygons, category, height, width, problems, path, where)
        if annotation:
            annotations.append((annotation, where))
    return annotations


def _box_annotation(
    coords: list[float], category: int, height: int, width: int, problems: ProblemLog, path: Path, where: str
) -> dict | None:
    """A detection line's box (``cx cy w h`` normalized), clipped to the image."""
    if not all(math.isfinite(v) for v in coords):
        problems.add("malformed", path, where, f"box values must be finite numbers, got {coords}")
        return None
    cx, cy, w, h = coords
    x0, x1 = max(0.0, (cx - w / 2) * width), min(float(width), (cx + w / 2) * width)
    y0, y1 = max(0.0, (cy - h / 2) * height), min(float(height), (cy + h / 2) * height)
    if x1 <= x0 or y1 <= y0:
        problems.add("zero_area_box", path, where, f"box cx {cx:g} cy {cy:g} w {w:g} h {h:g} has no area inside the image")
        return None
    return {"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": category, "iscrowd": 0}
