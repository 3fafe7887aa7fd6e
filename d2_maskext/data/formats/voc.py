"""PASCAL VOC-style instance PNGs (``voc_instances``), as PASCAL VOC and LabelMe's ``labelme2voc`` write them.

``annotations`` is the folder holding ``SegmentationObject/`` (per pixel the instance index: 0 background,
255 void) and ``SegmentationClass/`` (per pixel the class index, same names; palette or grey PNGs). Images are
found by name under ``image_root`` (VOC's ``JPEGImages/``). ``thing_classes`` is required: the class-names
file of the class indices, index 0 being the background (VOC's 21 names, or ``labelme2voc``'s
``class_names.txt``; a LabelMe ``labels.txt`` works too, its ``__ignore__`` line is skipped). Void pixels
become one ignore region per image (crowd: not trained on, predictions inside are not counted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...utils.image_io import IMAGE_EXTENSIONS
from .base import (
    DatasetSource,
    LoadedDataset,
    checked_image_size,
    dataset_format,
    expand_ignore_regions,
    ignore_region,
    mask_annotation,
    read_class_names,
)
from .labelme import IGNORE_LABEL
from .mask_png import read_sized_label_map
from .problems import DatasetError, ProblemLog

VOID = 255
OBJECTS_FOLDER = "SegmentationObject"
CLASSES_FOLDER = "SegmentationClass"


@dataset_format("voc_instances")
def load_voc_instances(source: DatasetSource, problems: ProblemLog) -> LoadedDataset:
    if source.thing_classes is None:
        raise DatasetError(f"dataset '{source.name}': voc_instances needs thing_classes, the names of the class "
                           "indices with the background first (e.g. labelme2voc's class_names.txt)")
    names = [name for name in read_class_names(source.thing_classes) if name != IGNORE_LABEL]
    thing_classes = names[1:]
    objects_folder = source.annotations / OBJECTS_FOLDER
    if not objects_folder.is_dir():
        problems.add("malformed", source.annotations, "", f"no {OBJECTS_FOLDER}/ folder of instance PNGs in it")
        return LoadedDataset([], thing_classes)
    records = []
    for objects_png in tqdm(sorted(objects_folder.rglob("*.png")), desc=f"loading {source.name}", unit="img", leave=False):
        record = _read_image(source, objects_png.relative_to(objects_folder), len(thing_classes), problems)
        if record is not None:
            records.append(record)
    expand_ignore_regions(records, len(thing_classes))
    return LoadedDataset(records, thing_classes)


def _find_image(image_root: Path, stem: Path) -> Path | None:
    for extension in IMAGE_EXTENSIONS:
        for candidate in (image_root / f"{stem}{extension}", image_root / f"{stem}{extension.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _read_image(source: DatasetSource, relative: Path, num_classes: int, problems: ProblemLog) -> dict | None:
    objects_png = source.annotations / OBJECTS_FOLDER / relative
    classes_png = source.annotations / CLASSES_FOLDER / relative
    image = _find_image(source.image_root, relative.with_suffix(""))
    if image is None:
        problems.add("missing_image", objects_png, "", f"no image {relative.with_suffix('')}.* under {source.image_root}")
        return None
    if not classes_png.is_file():
        problems.add("malformed", objects_png, "", f"no class PNG {classes_png} for this instance PNG")
        return None
    size = checked_image_size(image, problems)
    objects = size and read_sized_label_map(objects_png, image, size, problems)
    classes = size and read_sized_label_map(classes_png, image, size, problems)
    if objects is None or classes is None:
        return None
    annotations = []
    for instance in np.unique(objects[(objects > 0) & (objects != VOID)]).tolist():
        where = f"instance index {instance}"
        inside = objects == instance
        labels = classes[inside]
        values, counts = np.unique(labels[(labels > 0) & (labels != VOID)], return_counts=True)
        if not values.size:
            problems.add("unknown_category", classes_png, where, "its pixels are background (0) or void (255) here")
            continue
        label = int(values[np.argmax(counts)])
        if values.size > 1:
            problems.add("mixed_instance_class", classes_png, where,
                         f"pixels of classes {values.tolist()} (counts {counts.tolist()}); class {label} is used")
        if label > num_classes:
            problems.add("unknown_category", classes_png, where, f"class index {label} is not in 1..{num_classes}")
            continue
        annotation = mask_annotation(inside, label - 1, problems, objects_png, where)
        if annotation:
            annotations.append(annotation)
    void = objects == VOID
    if void.any():
        annotations.append(ignore_region(mask_annotation(void, -1, problems, objects_png, "void pixels")))
    return {"file_name": str(image), "height": size[0], "width": size[1], "annotations": annotations}
