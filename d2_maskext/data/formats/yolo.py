"""YOLO segmentation labels: one ``.txt`` per image, lines ``class x1 y1 x2 y2 ...`` normalized to [0, 1].

The label of ``<image_root>/a/b.jpg`` is ``<annotations>/a/b.txt``; class names come from ``thing_classes``
(a list, a names file with one name per line, or a YOLO ``data.yaml``). Images without a label file are
images without annotations.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    records = []
    for image, label_files in tqdm(pairs, desc=f"loading {source.name}", unit="img", leave=False):
        size = checked_image_size(image, problems)
        if size is None:
            continue
        height, width = size
        annotations = [a for f in label_files for a in _read_labels(f, names, height, width, problems)]
        records.append({"file_name": str(image), "height": height, "width": width, "annotations": annotations})
    return LoadedDataset(records, names)


def _read_labels(path: Path, names: list[str], height: int, width: int, problems: ProblemLog) -> list[dict]:
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
        scaled = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coords)]
        polygons = clean_polygons([scaled], height, width, problems, path, where)
        annotation = polygons and polygon_annotation(polygons, category, height, width, problems, path, where)
        if annotation:
            annotations.append(annotation)
    return annotations
