"""Registering a dataset by one Python call, or by declaring it in the config (``DATASETS.REGISTER``).

Declared datasets are registered by ``prepare_datasets`` inside ``setup_cfg``, which runs in every
process that ``launch`` starts, so they exist in all workers without code. A dataset registered from
Python must be registered at module level (or inside the function given to ``launch``) for the same reason.

Loading is lazy and happens once per process: the first ``DatasetCatalog.get`` loads and checks the files,
logs every dropped or questionable entry, stops with ``DatasetError`` on fatal problems, and sets the
metadata (``thing_classes``, and for COCO ``json_file`` and ``thing_dataset_id_to_contiguous_id``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from .formats import DatasetSource, ProblemLog, format_names, load_dataset
from .formats.yolo import is_data_yaml, resolve_data_yaml

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("name", "format", "image_root", "annotations")
OPTIONAL_KEYS = (
    "thing_classes",
    "class_map",
    "split",
    "crowd_as_instances",
    "split_components",
    "min_component_area",
    "mask_root",
    "mask_suffix",
    "class_root",
    "class_suffix",
)
_SOURCES: dict[str, DatasetSource] = {}


class _LoadOnce:
    """The ``DatasetCatalog`` entry of a registered dataset: loads and checks the files on first use."""

    def __init__(self, source: DatasetSource) -> None:
        self.source = source
        self._records: list[dict] | None = None

    def __call__(self) -> list[dict]:
        if self._records is None:
            problems = ProblemLog(self.source.name)
            loaded = load_dataset(self.source, problems)
            problems.log_summary()
            problems.raise_if_fatal()
            MetadataCatalog.get(self.source.name).set(thing_classes=loaded.thing_classes, **loaded.metadata)
            self._records = loaded.records
            logger.info(
                "dataset '%s': %d images, %d instances, %d classes from %s (%s)",
                self.source.name,
                len(loaded.records),
                sum(len(r["annotations"]) for r in loaded.records),
                len(loaded.thing_classes),
                self.source.annotations,
                self.source.format,
            )
        # Fresh top-level dicts: callers such as proposal loading add keys to the records they get.
        return [dict(record) for record in self._records]


def register_dataset(
    name: str,
    format: str,
    image_root: str | os.PathLike | None,
    annotations: str | os.PathLike | None = None,
    *,
    thing_classes: Sequence[str] | str | os.PathLike | None = None,
    class_map: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    split: str | None = None,
    crowd_as_instances: bool = False,
    split_components: bool = False,
    min_component_area: int = 1,
    mask_root: str | os.PathLike | None = None,
    mask_suffix: str = "",
    class_root: str | os.PathLike | None = None,
    class_suffix: str = "",
) -> DatasetSource:
    """Register ``name`` in Detectron2's catalogs.

    ``format`` is one of ``coco``, ``labelme``, ``cvat``, ``binary_masks``, ``instance_id_png``, ``label_maps``,
    ``voc_instances``, ``yolo`` (or one added with ``@dataset_format``). ``annotations`` is the COCO JSON file,
    the VOC folder holding ``SegmentationObject/`` and ``SegmentationClass/``, or the folder of LabelMe JSONs,
    masks or YOLO labels; for ``label_maps`` it may be named ``mask_root``, with ``mask_suffix``,
    ``class_root`` and ``class_suffix`` (see ``formats/label_maps.py``). ``thing_classes`` is a list of class
    names or a names file (required for YOLO and VOC, optional for LabelMe and mask folders, where classes are
    otherwise discovered). For YOLO, ``annotations`` may be the ``data.yaml`` with ``split``
    (``train``/``val``/``test``) instead, and ``image_root`` is then None.
    ``crowd_as_instances`` (COCO) trains on ``iscrowd: 1`` annotations; ``split_components`` with
    ``min_component_area`` (binary_masks) splits per-class masks into instances. Registering the same
    declaration again is a no-op; a different one under a taken name is an error.
    """
    if format not in format_names():
        raise ValueError(f"dataset '{name}': unknown format {format!r}; known formats: {format_names()}")
    if format != "label_maps" and (mask_root is not None or mask_suffix or class_root is not None or class_suffix):
        raise ValueError(f"dataset '{name}': mask_root, mask_suffix, class_root and class_suffix are options of format label_maps")
    if (annotations is None) == (mask_root is None):
        raise ValueError(f"dataset '{name}': give annotations (for label_maps also called mask_root), exactly once")
    annotations = annotations if annotations is not None else mask_root
    if format == "yolo" and is_data_yaml(annotations):
        data_yaml = Path(annotations)
        image_root, annotations = resolve_data_yaml(data_yaml, split)
        thing_classes = data_yaml if thing_classes is None else thing_classes
    elif split is not None:
        raise ValueError(f"dataset '{name}': split selects a split of a YOLO data.yaml given as annotations")
    elif image_root is None:
        raise ValueError(f"dataset '{name}': image_root is required (it may be omitted only for a YOLO data.yaml)")
    if not isinstance(min_component_area, int) or min_component_area < 1:
        raise ValueError(f"dataset '{name}': min_component_area must be a positive integer, got {min_component_area!r}")
    if isinstance(thing_classes, (str, os.PathLike)):
        classes: tuple[str, ...] | Path | None = Path(thing_classes)
    elif thing_classes is not None:
        classes = tuple(str(c) for c in thing_classes)
    else:
        classes = None
    source = DatasetSource(
        name=name,
        format=format,
        image_root=Path(image_root),
        annotations=Path(annotations),
        thing_classes=classes,
        class_map=Path(class_map) if class_map is not None else None,
        allow_outside_root=allow_outside_root,
        crowd_as_instances=bool(crowd_as_instances),
        split_components=bool(split_components),
        min_component_area=min_component_area,
        mask_suffix=mask_suffix,
        class_root=Path(class_root) if class_root is not None else None,
        class_suffix=class_suffix,
    )
    if name in _SOURCES:
        if _SOURCES[name] == source:
            return source
        raise ValueError(f"dataset '{name}' is already registered as {_SOURCES[name]}; cannot re-register it as {source}")
    if name in DatasetCatalog.list():
        raise ValueError(f"dataset '{name}' is already registered by other code; choose another name")
    DatasetCatalog.register(name, _LoadOnce(source))
    MetadataCatalog.get(name).set(image_root=os.fspath(source.image_root), evaluator_type="coco", dataset_format=format)
    _SOURCES[name] = source
    return source


def registered_source(name: str) -> DatasetSource | None:
    """The declaration of a dataset registered by ``register_dataset``, or None for other datasets."""
    return _SOURCES.get(name)


def register_declared_datasets(cfg: CfgNode) -> list[str]:
    """Register every entry of ``cfg.DATASETS.REGISTER``; return their names.

    Each entry is a mapping with keys ``name``, ``format``, ``image_root``, ``annotations`` and optionally
    the other arguments of :func:`register_dataset` (keys are case-insensitive; ``image_root`` may be omitted
    for a YOLO ``data.yaml`` with ``split``, and ``label_maps`` may name ``annotations`` ``mask_root``);
    relative paths are relative to the working directory, as for Detectron2's built-in datasets.
    """
    names = []
    for index, entry in enumerate(cfg.DATASETS.REGISTER):
        where = f"DATASETS.REGISTER[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping with keys {REQUIRED_KEYS} (+ optional {OPTIONAL_KEYS}), got {entry!r}")
        entry = {str(k).lower(): v for k, v in entry.items()}
        missing = [
            k for k in REQUIRED_KEYS
            if k not in entry and not (k == "image_root" and "split" in entry) and not (k == "annotations" and "mask_root" in entry)
        ]  # fmt: skip
        unknown = sorted(set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
        if missing or unknown:
            raise ValueError(
                f"{where}: missing keys {missing}, unknown keys {unknown}; "
                f"expected {REQUIRED_KEYS} and optionally {OPTIONAL_KEYS}"
            )
        entry.setdefault("image_root", None)
        register_dataset(**entry, allow_outside_root=cfg.DATASETS.ALLOW_PATHS_OUTSIDE_ROOT)
        names.append(entry["name"])
    return names
