"""Instance masks stored as PNG files, common in medical and satellite work. Two layouts:

* ``binary_masks``: one binary PNG per instance, ``<annotations>/<image path without extension>/<class>/<any>.png``
  (any non-zero pixel is foreground);
* ``instance_id_png``: one PNG per image, ``<annotations>/<image path without extension>.png``, whose pixels
  are instance ids (0 = background; 8- or 16-bit, or palette indices), plus ``class_map``: a JSON file
  ``{"<image path without extension>": {"<instance id>": "<class>"}}``.

``binary_masks`` with ``split_components`` reads datasets that have one mask per class and image (semantic
masks): each PNG is split into instances by connected components (8-connectivity), and components smaller
than ``min_component_area`` pixels are dropped and counted.

Classes are ``thing_classes`` if given, else the sorted set of class names found. Masks become exact
compressed RLE, so these datasets need ``INPUT.MASK_FORMAT "bitmask"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ...utils.image_io import ImageReadError, read_label_map
from ...utils.rle import label_map_rles
from .base import (
    DatasetSource,
    LoadedDataset,
    NamedCategories,
    checked_image_size,
    dataset_format,
    declared_class_names,
    images_with_annotations,
    mask_annotation,
    read_json,
    rle_annotation,
)
from .problems import DatasetError, ProblemLog


@dataset_format("binary_masks")
def load_binary_masks(source: DatasetSource, problems: ProblemLog) -> LoadedDataset:
    folder = source.annotations
    files = []
    for path in sorted(folder.rglob("*.png")):
        if len(path.relative_to(folder).parts) < 3:
            problems.add("malformed", path, "", "a mask must be at <image path without extension>/<class>/<name>.png")
        else:
            files.append(path)

    def read(image: Path, masks: list[Path], size: tuple[int, int], categories, annotations, problems) -> None:
        for path in masks:
            mask = read_sized_label_map(path, image, size, problems)
            if mask is None:
                continue
            pieces = _components(mask > 0, source.min_component_area, path, problems) if source.split_components else [("", mask > 0)]
            for where, piece in pieces:
                annotation = mask_annotation(piece, -1, problems, path, where)
                if annotation:
                    label = path.parent.name
                    categories.add(annotations, annotation, label, path, f"class folder {label!r}{where and ', ' + where}")

    return _load_images(source, problems, files, lambda p: p.parent.parent.relative_to(folder), read)


@dataset_format("instance_id_png")
def load_instance_id_png(source: DatasetSource, problems: ProblemLog) -> LoadedDataset:
    if source.class_map is None:
        raise DatasetError(f"dataset '{source.name}': instance_id_png needs class_map (JSON: image -> id -> class)")
    class_map = read_json(source.class_map, problems)
    if not isinstance(class_map, dict) or not all(isinstance(v, dict) for v in class_map.values()):
        if class_map is not None:
            problems.add("malformed", source.class_map, "", 'expected {"<image>": {"<instance id>": "<class>"}}')
        return LoadedDataset([], [])
    folder = source.annotations

    def read(image: Path, pngs: list[Path], size: tuple[int, int], categories, annotations, problems) -> None:
        for path in pngs:
            ids = read_sized_label_map(path, image, size, problems)
            if ids is None:
                continue
            key = path.relative_to(folder).with_suffix("").as_posix()
            for instance_id, rle in label_map_rles(ids).items():  # no full-size mask per instance
                where = f"instance id {instance_id}"
                label = class_map.get(key, {}).get(str(instance_id))
                if not isinstance(label, str):
                    problems.add("unknown_category", source.class_map, f"[{key!r}][{str(instance_id)!r}]",
                                 f"no class for instance id {instance_id} of {path}")
                    continue
                annotation = rle_annotation(rle, -1, problems, path, where)
                if annotation:
                    categories.add(annotations, annotation, label, path, where)

    files = sorted(folder.rglob("*.png"))
    return _load_images(source, problems, files, lambda p: p.relative_to(folder).with_suffix(""), read)


def _components(mask: np.ndarray, min_area: int, path: Path, problems: ProblemLog) -> Iterator[tuple[str, np.ndarray]]:
    """Connected components (8-connectivity) of a binary mask, largest first; small ones are reported."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    for index in np.argsort(-areas, kind="stable") + 1:
        x, y = stats[index, cv2.CC_STAT_LEFT], stats[index, cv2.CC_STAT_TOP]
        where = f"component at x {x}, y {y}"
        if stats[index, cv2.CC_STAT_AREA] < min_area:
            problems.add("small_component", path, where, f"{stats[index, cv2.CC_STAT_AREA]} px < min_component_area {min_area}")
            continue
        yield where, labels == index


def _load_images(source: DatasetSource, problems: ProblemLog, files: list[Path], image_key, read) -> LoadedDataset:
    """Shared walk: pair images with mask files, read each image's size, let ``read`` add its instances."""
    if not source.annotations.is_dir():
        problems.add("malformed", source.annotations, "", f"{source.format} annotations must be a folder")
        return LoadedDataset([], [])
    given = declared_class_names(source)
    categories = NamedCategories(given)
    records = []
    pairs = images_with_annotations(source, problems, files, image_key)
    for image, masks in tqdm(pairs, desc=f"loading {source.name}", unit="img", leave=False):
        size = checked_image_size(image, problems)
        if size is None:
            continue
        annotations: list[dict] = []
        read(image, masks, size, categories, annotations, problems)
        records.append({"file_name": str(image), "height": size[0], "width": size[1], "annotations": annotations})
    return LoadedDataset(records, categories.resolve(problems))


def read_sized_label_map(path: Path, image: Path, size: tuple[int, int], problems: ProblemLog) -> np.ndarray | None:
    """A label PNG or TIFF (mask, instance or class indices) of ``image``'s ``size``; None after recording why not."""
    try:
        mask = read_label_map(path)
    except ImageReadError as e:
        problems.add("unreadable_image", path, "", e.reason)
        return None
    if mask.shape != size:
        problems.add(
            "size_mismatch", path, "", f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {size[1]}x{size[0]} ({image})"
        )
        return None
    return mask
