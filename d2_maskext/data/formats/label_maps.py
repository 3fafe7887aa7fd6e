"""Instance label maps (``label_maps``), as cellpose, StarDist, napari and most microscopy tools save them.

One integer image per image (PNG of 8 or 16 bits, TIFF of 8, 16 or 32 bits): 0 is background, every other
value is one instance (ids need not be contiguous). ``annotations`` is the mask root; a mask belongs to the
image with the same path under ``image_root`` and the same stem plus ``mask_suffix`` (cellpose writes
``<stem>_masks.png`` or ``<stem>_cp_masks.png``); the mask root may be the image folder itself when a suffix
tells masks from images. Masks become exact compressed RLE (``INPUT.MASK_FORMAT "bitmask"``).

Classes: one (``thing_classes``, default ``object``) unless a sidecar gives each instance its own:

* ``class_root`` (+ ``class_suffix``): a semantic class map beside each mask, whose pixels are 1-based
  indices into ``thing_classes``; an instance takes the most frequent value under it, and an instance mostly
  on background (0) or on a tie between values is an ``unclear_instance_class`` problem;
* ``class_map``: a JSON ``{"<image path without extension>": {"<instance id>": "<class>"}}`` (as for
  ``instance_id_png``); classes are then ``thing_classes`` if given, else the sorted names found.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...utils.image_io import LABEL_MAP_EXTENSIONS, list_images
from ...utils.rle import label_map_rles
from .base import (
    DatasetSource,
    LoadedDataset,
    NamedCategories,
    checked_image_size,
    dataset_format,
    declared_class_names,
    read_json,
    rle_annotation,
)
from .mask_png import read_sized_label_map
from .problems import DatasetError, ProblemLog

DEFAULT_CLASS = "object"
MAX_VALUE = 2**32 - 1  # ids and classes of up to 32 bits: a (id, class) pair packs into one uint64


@dataset_format("label_maps")
def load_label_maps(source: DatasetSource, problems: ProblemLog) -> LoadedDataset:
    given = declared_class_names(source)
    _check_class_options(source, given)
    categories = NamedCategories(given if given is not None or source.class_map else [DEFAULT_CLASS])
    for folder in (source.annotations, source.class_root):
        if folder is not None and not folder.is_dir():
            problems.add("malformed", folder, "", "label_maps mask and class roots must be folders")
            return LoadedDataset([], categories.resolve(problems))
    class_table = _read_class_table(source.class_map, problems) if source.class_map is not None else None
    masks = _label_files(source.annotations, source.mask_suffix, problems)
    class_maps = _label_files(source.class_root, source.class_suffix, problems) if source.class_root else {}
    images = _images(source, set(masks.values()) | set(class_maps.values()), problems)
    for key, path in [*masks.items(), *class_maps.items()]:
        if key not in images:
            problems.add("missing_image", path, "", f"no image {key}.* under {source.image_root}")
    records = []
    for key, image in tqdm(images.items(), desc=f"loading {source.name}", unit="img", leave=False):
        mask = masks.get(key)
        if mask is None:
            problems.add("missing_mask", image, "", f"no label map {key}{source.mask_suffix}.png/.tif under {source.annotations}")
            continue
        if source.class_root is not None and key not in class_maps:
            problems.add("missing_mask", image, "", f"no class map {key}{source.class_suffix}.png/.tif under {source.class_root}")
            continue
        size = checked_image_size(image, problems)
        labels = size and _read_values(mask, image, size, problems)
        if labels is None:
            continue
        classes = class_maps.get(key) and _read_values(class_maps[key], image, size, problems)
        if key in class_maps and classes is None:
            continue
        rles = label_map_rles(labels)
        if not rles:
            problems.add("empty_label_map", mask, "", "every pixel is 0 (background): the image has no instances")
        if classes is not None:
            names = _majority_classes(labels, classes, given, class_maps[key], problems)
        elif class_table is not None:
            names = _table_classes(class_table, key.as_posix(), rles, source.class_map, mask, problems)
        else:
            names = dict.fromkeys(rles, categories.thing_classes[0])
        annotations: list[dict] = []
        for instance_id, rle in rles.items():
            where = f"instance id {instance_id}"
            annotation = names.get(instance_id) and rle_annotation(rle, -1, problems, mask, where)
            if annotation:
                categories.add(annotations, annotation, names[instance_id], mask, where)
        records.append({"file_name": str(image), "height": size[0], "width": size[1], "annotations": annotations})
    return LoadedDataset(records, categories.resolve(problems))


def _check_class_options(source: DatasetSource, given: list[str] | None) -> None:
    """Refuse class settings that cannot be meant, naming the dataset and what to set instead."""
    where = f"dataset '{source.name}' (label_maps)"
    if source.class_root is not None and source.class_map is not None:
        raise DatasetError(f"{where}: give class_root (class map images) or class_map (JSON), not both")
    if source.class_root is not None and not given:
        raise DatasetError(f"{where}: class_root needs thing_classes, the names of class values 1, 2, ...")
    if source.class_root is None and source.class_map is None and given is not None and len(given) != 1:
        raise DatasetError(f"{where}: {len(given)} thing_classes need class_root or class_map to tell instances apart")
    if source.class_suffix and source.class_root is None:
        raise DatasetError(f"{where}: class_suffix is set but class_root is not")


def _read_class_table(path: Path, problems: ProblemLog) -> dict | None:
    table = read_json(path, problems)
    if isinstance(table, dict) and all(isinstance(v, dict) for v in table.values()):
        return table
    if table is not None:
        problems.add("malformed", path, "", 'expected {"<image>": {"<instance id>": "<class>"}}')
    return None


def _label_files(root: Path, suffix: str, problems: ProblemLog) -> dict[Path, Path]:
    """Label files under ``root`` whose stem ends with ``suffix``, keyed by image path without extension."""
    found: dict[Path, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in LABEL_MAP_EXTENSIONS or not path.stem.endswith(suffix) or not path.is_file():
            continue
        relative = path.relative_to(root)
        key = relative.parent / relative.stem[: len(relative.stem) - len(suffix)]
        if key in found:
            problems.add("duplicate_id", path, "", f"label map for the same image as {found[key]}")
        else:
            found[key] = path
    return found


def _images(source: DatasetSource, label_files: set[Path], problems: ProblemLog) -> dict[Path, Path]:
    """Images under ``image_root`` keyed by path without extension; label files in the same tree are skipped."""
    if source.annotations.resolve() == source.image_root.resolve() and not source.mask_suffix:
        raise DatasetError(f"dataset '{source.name}': the mask root is the image folder, so mask_suffix must tell masks apart")
    exclude = source.annotations if source.annotations.resolve() != source.image_root.resolve() else None
    images: dict[Path, Path] = {}
    for relative in list_images(source.image_root, exclude=exclude):
        path = source.image_root / relative
        key = relative.with_suffix("")
        if path in label_files:
            continue
        if key in images:
            problems.add("duplicate_id", path, "", f"same name as {images[key]} but another extension")
        else:
            images[key] = path
    return images


def _read_values(path: Path, image: Path, size: tuple[int, int], problems: ProblemLog) -> np.ndarray | None:
    """A label or class map of ``image``'s size with values in 0..2**32-1; None after recording why not."""
    values = read_sized_label_map(path, image, size, problems)
    if values is not None and values.size and (values.min() < 0 or values.max() > MAX_VALUE):
        problems.add("malformed", path, "", f"values {values.min()}..{values.max()} are outside 0..{MAX_VALUE}")
        return None
    return values


def _majority_classes(
    labels: np.ndarray, classes: np.ndarray, names: list[str], class_file: Path, problems: ProblemLog
) -> dict[int, str]:
    """Per instance id, the name of the most frequent class-map value under it; unclear ones are recorded."""
    foreground = labels != 0
    pairs = (labels[foreground].astype(np.uint64) << np.uint64(32)) | classes[foreground].astype(np.uint64)
    pairs, counts = np.unique(pairs, return_counts=True)
    ids, values = pairs >> np.uint64(32), pairs & np.uint64(MAX_VALUE)
    found: dict[int, str] = {}
    for instance_id, start, stop in zip(*_groups(ids)):
        where = f"instance id {instance_id}"
        group_values, group_counts = values[start:stop], counts[start:stop]
        top = np.flatnonzero(group_counts == group_counts.max())
        value = int(group_values[top[0]])
        summary = f"class values {group_values.tolist()} with pixel counts {group_counts.tolist()}"
        if top.size > 1 or value == 0:
            reason = "a tie" if top.size > 1 else "mostly background (0)"
            problems.add("unclear_instance_class", class_file, where, f"{reason}: {summary}")
        elif value > len(names):
            problems.add("unknown_category", class_file, where, f"class value {value} is not in 1..{len(names)}")
        else:
            if group_values.size > 1:
                problems.add("mixed_instance_class", class_file, where, f"{summary}; value {value} is used")
            found[instance_id] = names[value - 1]
    return found


def _groups(sorted_ids: np.ndarray) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Distinct values of a sorted array with the start and stop index of each one's run."""
    distinct, starts = np.unique(sorted_ids, return_index=True)
    return distinct.tolist(), starts, np.append(starts[1:], sorted_ids.size)


def _table_classes(
    table: dict, key: str, rles: dict[int, dict], table_file: Path, mask: Path, problems: ProblemLog
) -> dict[int, str]:
    """Per instance id, its class name from the JSON class map; ids without one are recorded."""
    found: dict[int, str] = {}
    for instance_id in rles:
        label = table.get(key, {}).get(str(instance_id))
        if isinstance(label, str):
            found[instance_id] = label
        else:
            problems.add("unknown_category", table_file, f"[{key!r}][{str(instance_id)!r}]",
                         f"no class for instance id {instance_id} of {mask}")  # fmt: skip
    return found
