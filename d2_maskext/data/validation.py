"""Dataset scanner (``tools/validate_dataset.py``) and the start-up checks run by ``prepare_datasets``.

The scanner re-loads a dataset collecting every problem instead of stopping at fatal ones, then decodes
every image to find missing, unreadable and wrongly sized ones. Start-up checks catch configuration
mistakes before the first iteration instead of deep inside training.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from tqdm import tqdm

from ..utils.image_io import decoded_size
from .formats import ImageReadError, ProblemLog, Severity, load_dataset
from .formats.base import check_record_list, clean_polygons, is_int
from .registration import registered_source
from .synthetic import is_synthetic

# Where each meta-architecture keeps its class count.
_NUM_CLASSES_KEYS = {"GeneralizedRCNN": "ROI_HEADS", "MaskExtRCNN": "ROI_HEADS", "RetinaNet": "RETINANET"}


@dataclass
class ScanReport:
    name: str
    problems: ProblemLog
    num_images: int
    class_counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.problems.count(Severity.FATAL) == 0

    def format(self) -> str:
        counts = ", ".join(f"{name} {n}" for name, n in self.class_counts.items())
        lines = [
            f"dataset '{self.name}': {self.num_images} images, {sum(self.class_counts.values())} instances",
            f"  instances per class: {counts or '-'}",
            "  problems: " + ", ".join(f"{self.problems.count(s)} {s.value}" for s in Severity),
        ]
        details = self.problems.report()
        return "\n".join(lines + ([details] if details else []))


def scan_dataset(name: str, read_images: bool = True, max_examples: int = 5) -> ScanReport:
    """Report every problem of a registered dataset with counts and first examples; never raises on data."""
    problems = ProblemLog(name, max_examples)
    source = registered_source(name)
    if source is not None:
        loaded = load_dataset(source, problems)
        records, classes = loaded.records, loaded.thing_classes
    else:
        records = DatasetCatalog.get(name)
        classes = MetadataCatalog.get(name).get("thing_classes")
        check_foreign_records(records, classes, problems)
    if read_images:
        check_images(records, problems, desc=f"scanning {name}")
    counts: Counter[int] = Counter(a.get("category_id") for r in records for a in r.get("annotations", []))
    names = list(classes) if classes else sorted(counts)
    class_counts = {str(n): counts[i if classes else n] for i, n in enumerate(names)}
    return ScanReport(name, problems, len(records), class_counts)


def check_foreign_records(records: list[dict], thing_classes: list[str] | None, problems: ProblemLog) -> None:
    """Per-annotation checks for datasets registered by other code (plugin formats check while loading)."""
    check_record_list(records, problems)
    for i, record in enumerate(records):
        file, height, width = record["file_name"], record.get("height"), record.get("width")
        for j, ann in enumerate(record.get("annotations", [])):
            where = f"record #{i}, annotation #{j}"
            category = ann.get("category_id")
            if thing_classes is not None and not (is_int(category) and 0 <= category < len(thing_classes)):
                problems.add("unknown_category", file, where, f"category_id {category!r} is not in 0..{len(thing_classes) - 1}")
            x0, y0, x1, y1 = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            if x1 <= x0 or y1 <= y0:
                problems.add("zero_area_box", file, where, f"box {list(ann['bbox'])} has zero area")
            segm = ann.get("segmentation")
            if isinstance(segm, list) and height and width:
                clean_polygons(segm, height, width, problems, file, where)
            elif isinstance(segm, dict) and height and list(segm.get("size", [])) != [height, width]:
                problems.add("size_mismatch", file, where, f"RLE size {segm.get('size')} differs from [{height}, {width}]")


def check_images(records: list[dict], problems: ProblemLog, desc: str = "reading images") -> None:
    """Decode every image fully: missing, unreadable (corrupt, truncated, decompression bomb), wrong size."""
    for index, record in enumerate(tqdm(records, desc=desc, unit="img")):
        file, where = record["file_name"], f"record #{index}"
        try:
            height, width = decoded_size(file)
        except ImageReadError as e:
            problems.add("missing_image" if e.missing else "unreadable_image", file, where, e.reason)
            continue
        expected = (record.get("height", height), record.get("width", width))
        if (height, width) != expected:
            problems.add(
                "size_mismatch", file, where, f"image is {width}x{height}, annotations say {expected[1]}x{expected[0]}"
            )


# ---------------------------------------------------------------------------------------- start-up checks
def dataset_names(cfg: CfgNode) -> list[str]:
    """``DATASETS.TRAIN`` then ``DATASETS.TEST``, refusing a bare string (``("name")`` is not a tuple)."""
    for key in ("TRAIN", "TEST"):
        value = cfg.DATASETS[key]
        if isinstance(value, str):
            raise ValueError(
                f"DATASETS.{key} is the string {value!r}, which Detectron2 would read letter by letter; it must be "
                f'a tuple of names: write ("{value}",) with a trailing comma (YAML and command line alike)'
            )
    return list(dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]))


def check_registered(names: list[str]) -> None:
    available = DatasetCatalog.list()
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3)
            hint = f"; did you mean {close}?" if close else "; declare it in DATASETS.REGISTER or register it in code"
            raise KeyError(f"dataset '{name}' is not registered{hint}")


def check_num_classes(cfg: CfgNode, names: list[str]) -> None:
    """The model's class count must equal each dataset's number of ``thing_classes``."""
    head = _NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE)
    if head is None:
        return
    num_classes = cfg.MODEL[head].NUM_CLASSES
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(
                f"MODEL.{head}.NUM_CLASSES is {num_classes} but dataset '{name}' has {len(classes)} classes "
                f"{list(classes)[:10]}{' ...' if len(classes) > 10 else ''}; set MODEL.{head}.NUM_CLASSES {len(classes)}"
            )


def check_mask_format(cfg: CfgNode, names: list[str], mapper_rasterizes_masks: bool) -> None:
    """RLE masks cannot be used as polygons: catch ``INPUT.MASK_FORMAT "polygon"`` with mask datasets."""
    if not cfg.MODEL.MASK_ON or cfg.INPUT.MASK_FORMAT != "polygon" or mapper_rasterizes_masks:
        return
    for name in names:
        if is_synthetic(name):  # known without generating it
            raise ValueError(
                f"dataset '{name}' is a built-in synthetic dataset, whose masks are RLE, but "
                'INPUT.MASK_FORMAT is "polygon"; set INPUT.MASK_FORMAT "bitmask"'
            )
        if registered_source(name) is None:  # only datasets already loaded by prepare_datasets are inspected
            continue
        for record in DatasetCatalog.get(name):
            for j, ann in enumerate(record["annotations"]):
                if isinstance(ann.get("segmentation"), dict) and not ann.get("iscrowd", 0):
                    raise ValueError(
                        f"dataset '{name}' has RLE masks ({record['file_name']}, annotation #{j}) but "
                        'INPUT.MASK_FORMAT is "polygon"; set INPUT.MASK_FORMAT "bitmask"'
                    )
