"""What every dataset format shares: the declaration, the format registry and checked building blocks.

A format is a function ``load(source, problems) -> LoadedDataset`` registered with ``@dataset_format``.
It turns files into Detectron2 dataset dicts and records every problem in ``problems`` (never raising
on the first bad entry), using the helpers below so that all formats check entries the same way.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import yaml
from detectron2.structures import BoxMode

from ...utils.image_io import ImageReadError, image_size, list_images
from ...utils.rle import mask_to_rle
from .problems import DatasetError, ProblemLog


@dataclass(frozen=True)
class DatasetSource:
    """A dataset declaration: enough to load (and re-load, for the scanner) the dataset."""

    name: str
    format: str
    image_root: Path
    annotations: Path
    # Class names in contiguous-id order, or a names file (one per line, or a YAML with ``names``).
    thing_classes: tuple[str, ...] | Path | None = None
    # instance_id_png and label_maps: JSON {image path without extension: {instance id: class name}}.
    class_map: Path | None = None
    # Accept paths inside annotation files (COCO file_name, LabelMe imagePath) that leave image_root.
    allow_outside_root: bool = False
    # coco only: train on iscrowd 1 annotations as instances (CVAT's COCO export marks every mask crowd).
    crowd_as_instances: bool = False
    # binary_masks only: one mask per class and image, split into instances by connected components
    # (8-connectivity); components smaller than min_component_area pixels are dropped and counted.
    split_components: bool = False
    min_component_area: int = 1
    # label_maps only (``annotations`` is the mask root): masks are named ``<image stem><mask_suffix>``; a
    # class map per mask (pixel values: 1-based indices into thing_classes) lies under class_root, named
    # ``<image stem><class_suffix>``.
    mask_suffix: str = ""
    class_root: Path | None = None
    class_suffix: str = ""


@dataclass
class LoadedDataset:
    records: list[dict]
    thing_classes: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)


FormatLoader = Callable[[DatasetSource, ProblemLog], LoadedDataset]
_FORMATS: dict[str, FormatLoader] = {}


def dataset_format(name: str) -> Callable[[FormatLoader], FormatLoader]:
    """Register a loader under ``name`` (the ``format`` of ``register_dataset`` and ``DATASETS.REGISTER``)."""

    def register(loader: FormatLoader) -> FormatLoader:
        if name in _FORMATS:
            raise KeyError(f"dataset format {name!r} is already registered")
        _FORMATS[name] = loader
        return loader

    return register


def format_names() -> list[str]:
    return sorted(_FORMATS)


def load_dataset(source: DatasetSource, problems: ProblemLog) -> LoadedDataset:
    """Run the format's loader, then the checks that hold for every format's records."""
    if source.format not in _FORMATS:
        raise KeyError(f"unknown dataset format {source.format!r} for '{source.name}'; known: {format_names()}")
    loaded = _FORMATS[source.format](source, problems)
    for index, record in enumerate(loaded.records):
        record.setdefault("image_id", index)  # evaluators need one; COCO keeps the file's ids
    check_record_list(loaded.records, problems)
    return loaded


def check_record_list(records: list[dict], problems: ProblemLog) -> None:
    """Checks that hold for any dataset's list: duplicate image files or ids, images without annotations."""
    seen_files: dict[str, int] = {}
    seen_ids: dict[Any, int] = {}
    for index, record in enumerate(records):
        where = f"record #{index}"
        first = seen_files.setdefault(record["file_name"], index)
        if first != index:
            problems.add("duplicate_id", record["file_name"], where, f"same image file as record #{first}")
        first = seen_ids.setdefault(record.get("image_id", index), index)
        if first != index:
            problems.add("duplicate_id", record["file_name"], where, f"image_id {record['image_id']} also used by record #{first}")
        if not record.get("annotations"):
            problems.add("no_annotations", record["file_name"], where, "image has no annotations")


# ------------------------------------------------------------------------------------------------ files
def read_json(path: Path, problems: ProblemLog) -> Any | None:
    """Parsed JSON, or None after recording why it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        problems.add("malformed", path, "", "file not found")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.add("malformed", path, "", f"cannot parse JSON: {e}")
    return None


def resolve_inside_root(
    source: DatasetSource, path_text: str, base: Path, problems: ProblemLog, file: Path, where: str
) -> Path | None:
    """``base / path_text`` if it stays inside the image root (lexically: ``..`` and absolute paths count,
    symlinks the user made do not), else None with a ``path_outside_root`` problem unless allowed."""
    root = os.path.abspath(source.image_root)
    candidate = os.path.abspath(os.path.join(base, path_text))
    if source.allow_outside_root or os.path.commonpath([root, candidate]) == root:
        return Path(candidate)
    problems.add(
        "path_outside_root",
        file,
        where,
        f"{path_text!r} resolves to {candidate}, outside the dataset root {root} "
        "(set DATASETS.ALLOW_PATHS_OUTSIDE_ROOT True to accept it)",
    )
    return None


def images_with_annotations(
    source: DatasetSource, problems: ProblemLog, annotation_files: list[Path], image_key: Callable[[Path], Path]
) -> list[tuple[Path, list[Path]]]:
    """Pair every image under the image root with its annotation files.

    ``image_key(file)`` is the image path, relative to the root and without extension, that an annotation
    file belongs to. Annotation files whose image does not exist are ``missing_image`` problems.
    """
    images: dict[Path, Path] = {}
    for relative in list_images(source.image_root, exclude=source.annotations):
        key = relative.with_suffix("")
        if key in images:
            problems.add("duplicate_id", source.image_root / relative, "", f"same name as {images[key]} but another extension")
        else:
            images[key] = relative
    files: dict[Path, list[Path]] = {}
    for path in sorted(annotation_files):
        files.setdefault(image_key(path), []).append(path)
    for key, paths in files.items():
        if key not in images:
            problems.add("missing_image", paths[0], "", f"no image {key}.* under {source.image_root}")
    return [(source.image_root / relative, files.get(key, [])) for key, relative in images.items()]


def checked_image_size(path: Path, problems: ProblemLog) -> tuple[int, int] | None:
    """``(height, width)`` from the image header, or None after recording why it cannot be read."""
    try:
        return image_size(path)
    except ImageReadError as e:
        problems.add("missing_image" if e.missing else "unreadable_image", path, "", e.reason)
        return None


def declared_class_names(source: DatasetSource) -> list[str] | None:
    """The class names the declaration gives (``thing_classes``), or None where the format finds its own."""
    return read_class_names(source.thing_classes) if source.thing_classes is not None else None


def read_class_names(thing_classes: tuple[str, ...] | Path) -> list[str]:
    """Class names from a sequence, a text file (one per line) or a YAML file with ``names`` (list or {id: name})."""
    if not isinstance(thing_classes, Path):
        return list(thing_classes)
    try:
        text = thing_classes.read_text(encoding="utf-8")
    except OSError as e:
        raise DatasetError(f"{thing_classes}: cannot read the class-names file: {e}") from e
    if thing_classes.suffix.lower() not in (".yaml", ".yml"):
        return [line.strip() for line in text.splitlines() if line.strip()]
    data = yaml.safe_load(text)
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{thing_classes}: expected 'names' as a list or as {{0: name, 1: name, ...}}")
    return names


# --------------------------------------------------------------------------------------------- instances
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def clean_polygons(
    segmentation: Any, height: int, width: int, problems: ProblemLog, file: Path | str, where: str
) -> list[list[float]] | None:
    """Polygons with at least 3 points as flat float lists; None when nothing usable is left (recorded)."""
    if not isinstance(segmentation, list) or not all(isinstance(p, (list, tuple)) for p in segmentation):
        problems.add("malformed", file, where, "segmentation must be a list of polygons [x0, y0, x1, y1, ...]")
        return None
    kept = []
    for k, polygon in enumerate(segmentation):
        if len(polygon) % 2 or not all(is_finite_number(v) for v in polygon):
            problems.add("malformed", file, where, f"polygon #{k} is not an even-length list of finite numbers")
            return None
        if len(polygon) < 6:
            problems.add("degenerate_polygon", file, where, f"polygon #{k} has {len(polygon) // 2} point(s)")
            continue
        kept.append([float(v) for v in polygon])
    if not kept:
        return None
    points = np.concatenate([np.reshape(p, (-1, 2)) for p in kept])
    if points.min() < 0 or points[:, 0].max() > width or points[:, 1].max() > height:
        problems.add(
            "polygon_outside_image", file, where, f"points span {_extent_text(points)}, image is {width}x{height}"
        )
    return kept


def _extent_text(points: np.ndarray) -> str:
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    return f"x {x0:g}..{x1:g}, y {y0:g}..{y1:g}"


def polygon_annotation(
    polygons: list[list[float]], category_id: int, height: int, width: int, problems: ProblemLog, file, where: str
) -> dict | None:
    """Annotation whose box is the polygons' extent inside the image; None (recorded) if it has no area."""
    points = np.concatenate([np.reshape(p, (-1, 2)) for p in polygons])
    x0, y0 = np.clip(points.min(0), 0, (width, height))
    x1, y1 = np.clip(points.max(0), 0, (width, height))
    if x1 <= x0 or y1 <= y0:
        problems.add("zero_area_box", file, where, f"polygon extent inside the image is {x1 - x0:g}x{y1 - y0:g}")
        return None
    return {
        "bbox": [float(x0), float(y0), float(x1), float(y1)],
        "bbox_mode": BoxMode.XYXY_ABS,
        "segmentation": polygons,
        "category_id": category_id,
        "iscrowd": 0,
    }


def mask_annotation(mask: np.ndarray, category_id: int, problems: ProblemLog, file, where: str) -> dict | None:
    """Annotation with the mask as compressed RLE (exact, holes included) and its tight box."""
    return rle_annotation(mask_to_rle(mask), category_id, problems, file, where)


def rle_annotation(rle: dict, category_id: int, problems: ProblemLog, file, where: str) -> dict | None:
    """Annotation with a compressed RLE mask and its tight box; None (recorded) if the mask is empty."""
    x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
    if w <= 0 or h <= 0:
        problems.add("zero_area_box", file, where, "mask is empty")
        return None
    return {"bbox": [x, y, w, h], "bbox_mode": BoxMode.XYWH_ABS, "segmentation": rle, "category_id": category_id, "iscrowd": 0}


def ignore_region(annotation: dict) -> dict:
    """``annotation`` turned into an ignore region: crowd, so Detectron2 does not train on it and COCOeval
    does not count predictions inside it; ``expand_ignore_regions`` gives it every class."""
    return {**annotation, "iscrowd": 1, "category_id": -1}


def expand_ignore_regions(records: list[dict], num_classes: int) -> None:
    """Replace each class-less ignore region by one crowd region per class: COCOeval ignores a prediction
    only inside a crowd region of its own class, and an ignore region holds for predictions of any class."""
    for record in records:
        annotations = []
        for annotation in record["annotations"]:
            if annotation["iscrowd"] and annotation["category_id"] == -1:
                annotations.extend({**annotation, "category_id": k} for k in range(num_classes))
            else:
                annotations.append(annotation)
        record["annotations"] = annotations


class NamedCategories:
    """Instances labelled by class name; contiguous ids are assigned once every label has been seen.

    With ``thing_classes`` given, labels outside it are ``unknown_category``; otherwise the classes are
    the sorted set of labels found.
    """

    def __init__(self, thing_classes: Sequence[str] | None) -> None:
        self.thing_classes = list(thing_classes) if thing_classes is not None else None
        self._pending: list[tuple[list[dict], dict, str, str, str]] = []

    def add(self, siblings: list[dict], annotation: dict, label: str, file: Path | str, where: str) -> None:
        """Append ``annotation`` to its image's list ``siblings``; its category is set by ``resolve``."""
        siblings.append(annotation)
        self._pending.append((siblings, annotation, label, os.fspath(file), where))

    def resolve(self, problems: ProblemLog) -> list[str]:
        classes = self.thing_classes
        if classes is None:
            classes = sorted({label for _, _, label, _, _ in self._pending})
        index = {name: i for i, name in enumerate(classes)}
        for siblings, annotation, label, file, where in self._pending:
            if label in index:
                annotation["category_id"] = index[label]
            else:
                problems.add("unknown_category", file, where, f"class {label!r} is not in {classes}")
                siblings[:] = [a for a in siblings if a is not annotation]
        return classes
