"""COCO instances JSON: polygons, compressed and uncompressed RLE, ``iscrowd``.

Produces the same records as Detectron2's ``load_coco_json`` (images sorted by id, contiguous category ids
in the order of the sorted dataset ids), but checks every entry and reports problems by their index in
the file instead of asserting on the first one.

Crowd annotations (``iscrowd: 1``) are kept and, as in Detectron2, not trained on. CVAT's COCO export writes
every mask annotation as RLE with ``iscrowd: 1``; a dataset where most instances are crowd is reported, and
``crowd_as_instances`` trains on them as ordinary instances (evaluation then converts the loaded records
instead of reading the file, so it treats them as instances too).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pycocotools.mask as mask_util
from detectron2.structures import BoxMode

from .base import (
    DatasetSource,
    LoadedDataset,
    clean_polygons,
    dataset_format,
    is_finite_number,
    is_int,
    read_json,
    resolve_inside_root,
)
from .problems import DatasetError, ProblemLog

logger = logging.getLogger(__name__)


@dataset_format("coco")
def load_coco(source: DatasetSource, problems: ProblemLog) -> LoadedDataset:
    if source.thing_classes is not None:
        raise DatasetError(f"dataset '{source.name}': COCO class names come from the file's 'categories'; "
                           "do not pass thing_classes")
    path = source.annotations
    data = read_json(path, problems)
    if data is None:
        return LoadedDataset([], [])
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        problems.add("malformed", path, "", "expected an object with lists 'images', 'annotations' and 'categories'")
        return LoadedDataset([], [])
    id_map, thing_classes = _read_categories(data["categories"], path, problems)
    records, known_image_ids = _read_images(data["images"], source, problems)
    _read_annotations(data["annotations"], records, known_image_ids, id_map, path, problems)
    loaded = [records[i] for i in sorted(records)]
    metadata = {"thing_dataset_id_to_contiguous_id": id_map}
    if source.crowd_as_instances:
        for record in loaded:
            for annotation in record["annotations"]:
                annotation["iscrowd"] = 0
    else:
        _check_crowd_share(source, loaded, problems)
        metadata["json_file"] = os.fspath(path)
    return LoadedDataset(loaded, thing_classes, metadata)


def _check_crowd_share(source: DatasetSource, records: list[dict], problems: ProblemLog) -> None:
    """Most instances crowd (as CVAT exports masks): Detectron2 would train on almost nothing; say how to fix it."""
    total = sum(len(r["annotations"]) for r in records)
    crowd = sum(a["iscrowd"] for r in records for a in r["annotations"])
    if total and crowd * 2 > total:
        detail = (
            f"{crowd} of {total} instances are iscrowd 1, which Detectron2 does not train on (CVAT's COCO export "
            f"marks every mask so); set 'crowd_as_instances: true' in the DATASETS.REGISTER entry of "
            f"'{source.name}' (register_dataset(..., crowd_as_instances=True)) to use them as instances"
        )
        problems.add("mostly_crowd", source.annotations, "", detail)
        logger.warning("dataset '%s': %s", source.name, detail)


def _read_categories(categories: list, path: Path, problems: ProblemLog) -> tuple[dict[int, int], list[str]]:
    names: dict[int, str] = {}
    for k, category in enumerate(categories):
        where = f"categories[{k}]"
        if not isinstance(category, dict) or not is_int(category.get("id")) or not isinstance(category.get("name"), str):
            problems.add("malformed", path, where, "a category needs an integer 'id' and a string 'name'")
        elif category["id"] in names:
            problems.add("duplicate_id", path, where, f"category id {category['id']} is used twice")
        else:
            names[category["id"]] = category["name"]
    ids = sorted(names)
    return {dataset_id: i for i, dataset_id in enumerate(ids)}, [names[i] for i in ids]


def _read_images(images: list, source: DatasetSource, problems: ProblemLog) -> tuple[dict[Any, dict], set]:
    path = source.annotations
    records: dict[Any, dict] = {}
    known: set = set()
    for k, image in enumerate(images):
        where = f"images[{k}]"
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) or "id" not in image:
            problems.add("malformed", path, where, "an image needs an 'id' and a string 'file_name'")
            continue
        image_id = image["id"]
        where = f"images[{k}] (id {image_id})"
        if not all(is_int(image.get(key)) and image[key] > 0 for key in ("height", "width")):
            problems.add("malformed", path, where, "an image needs positive integer 'height' and 'width'")
            continue
        if image_id in known:
            problems.add("duplicate_id", path, where, f"image id {image_id} is used twice")
            continue
        known.add(image_id)
        file_name = resolve_inside_root(source, image["file_name"], source.image_root, problems, path, where)
        if file_name is None:
            continue
        if not file_name.is_file():
            problems.add("missing_image", path, where, f"{file_name} does not exist")
            continue
        records[image_id] = {
            "file_name": os.fspath(file_name),
            "height": image["height"],
            "width": image["width"],
            "image_id": image_id,
            "annotations": [],
        }
    return records, known


def _read_annotations(
    annotations: list, records: dict[Any, dict], known_image_ids: set, id_map: dict[int, int], path: Path, problems: ProblemLog
) -> None:
    seen_ids: set = set()
    without_mask: list[tuple[list, dict, str]] = []
    with_mask = 0
    for k, ann in enumerate(annotations):
        where = f"annotations[{k}]"
        if not isinstance(ann, dict) or any(key not in ann for key in ("id", "image_id", "category_id", "bbox")):
            problems.add("malformed", path, where, "an annotation needs 'id', 'image_id', 'category_id' and 'bbox'")
            continue
        where = f"annotations[{k}] (id {ann['id']})"
        if ann["id"] in seen_ids:
            problems.add("duplicate_id", path, where, f"annotation id {ann['id']} is used twice")
            continue
        seen_ids.add(ann["id"])
        if ann["image_id"] not in known_image_ids:
            problems.add("malformed", path, where, f"image_id {ann['image_id']} is not in 'images'")
            continue
        if ann["category_id"] not in id_map:
            problems.add("unknown_category", path, where, f"category_id {ann['category_id']} is not in 'categories'")
            continue
        record = records.get(ann["image_id"])
        if record is None:  # the image itself was rejected and reported
            continue
        obj = _read_instance(ann, record, path, where, problems)
        if obj is None:
            continue
        obj["category_id"] = id_map[ann["category_id"]]
        record["annotations"].append(obj)
        if "segmentation" in obj:
            with_mask += 1
        else:
            without_mask.append((record["annotations"], obj, where))
    if with_mask:  # a dataset with masks: instances without one cannot be trained on
        for objs, obj, where in without_mask:
            problems.add("missing_segmentation", path, where, "annotation has no segmentation")
            objs[:] = [o for o in objs if o is not obj]


def _read_instance(ann: dict, record: dict, path: Path, where: str, problems: ProblemLog) -> dict | None:
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_finite_number(v) for v in bbox):
        problems.add("malformed", path, where, f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        return None
    if bbox[2] <= 0 or bbox[3] <= 0:
        problems.add("zero_area_box", path, where, f"bbox {bbox} has zero width or height")
        return None
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):
        problems.add("malformed", path, where, f"iscrowd must be 0 or 1, got {iscrowd!r}")
        return None
    obj = {"bbox": [float(v) for v in bbox], "bbox_mode": BoxMode.XYWH_ABS, "iscrowd": iscrowd}
    segm = ann.get("segmentation")
    if not segm:
        return obj
    height, width = record["height"], record["width"]
    if isinstance(segm, dict):
        segm = _read_rle(segm, height, width, path, where, problems)
    else:
        segm = clean_polygons(segm, height, width, problems, path, where)
    if segm is None:
        return None
    obj["segmentation"] = segm
    return obj


def _read_rle(rle: dict, height: int, width: int, path: Path, where: str, problems: ProblemLog) -> dict | None:
    """Compressed RLE as is; uncompressed RLE (counts as a list) compressed, as Detectron2 does."""
    counts, size = rle.get("counts"), rle.get("size")
    if not (isinstance(size, list) and len(size) == 2 and isinstance(counts, (str, list))):
        problems.add("malformed", path, where, "RLE needs 'size' [height, width] and 'counts' (string or list)")
        return None
    if list(size) != [height, width]:
        problems.add("size_mismatch", path, where, f"RLE size {size} differs from the image's [{height}, {width}]")
        return None
    if isinstance(counts, str):
        return {"size": size, "counts": counts}
    if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
        problems.add("malformed", path, where, f"uncompressed RLE counts must be non-negative and sum to {height * width}")
        return None
    compressed = mask_util.frPyObjects(rle, height, width)
    return {"size": size, "counts": compressed["counts"].decode("ascii")}
