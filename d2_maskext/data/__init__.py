"""Datasets and dataset mappers; importing registers the built-in datasets, formats and mappers."""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog

from . import mappers
from .formats import DatasetError, DatasetSource, ProblemLog, dataset_format, format_names
from .registration import register_dataset, register_declared_datasets, registered_source
from .synthetic import SYNTHETIC_CLASSES, SyntheticSpec, register_synthetic
from .validation import (
    ScanReport,
    check_mask_format,
    check_num_classes,
    check_registered,
    dataset_names,
    scan_dataset,
)


def prepare_datasets(cfg: CfgNode) -> None:
    """Register datasets declared in ``cfg`` and check them against the config before training starts.

    Runs in every process started by ``launch``, so registrations hold in all workers. Datasets registered
    by the plugin are loaded here, so their fatal problems stop the run before the model is built.
    """
    names = dataset_names(cfg)
    register_declared_datasets(cfg)
    check_registered(names)
    for name in names:
        if registered_source(name) is not None:
            DatasetCatalog.get(name)
    check_num_classes(cfg, names)
    mapper = mappers.MAPPER_REGISTRY.get(cfg.INPUT.MAPPER.NAME)
    check_mask_format(cfg, list(cfg.DATASETS.TRAIN), getattr(mapper, "rasterizes_masks", False))


__all__ = [
    "SYNTHETIC_CLASSES",
    "DatasetError",
    "DatasetSource",
    "ProblemLog",
    "ScanReport",
    "SyntheticSpec",
    "dataset_format",
    "format_names",
    "prepare_datasets",
    "register_dataset",
    "register_synthetic",
    "scan_dataset",
]
