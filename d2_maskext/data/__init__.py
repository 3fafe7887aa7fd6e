"""Datasets and dataset mappers; importing registers the built-in datasets."""

from __future__ import annotations

from detectron2.config import CfgNode

from .synthetic import SYNTHETIC_CLASSES, SyntheticSpec, register_synthetic


def prepare_datasets(cfg: CfgNode) -> None:
    """Register datasets declared in ``cfg`` and check them against the config before training starts.

    Runs in every process started by ``launch``, so registrations hold in all workers.
    """


__all__ = ["SYNTHETIC_CLASSES", "SyntheticSpec", "prepare_datasets", "register_synthetic"]
