"""``DefaultTrainer`` that builds the dataset mapper and evaluator chosen by config."""

from __future__ import annotations

import os
from argparse import Namespace

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import DatasetEvaluator

from ..config import add_maskext_config
from ..data import prepare_datasets
from ..data.mappers import build_mapper
from ..evaluation import build_evaluator


class Trainer(DefaultTrainer):
    """Detectron2's trainer with plugin mappers and evaluators; everything else is stock."""

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        DatasetCatalog.get(dataset_name)  # generated/validated datasets exist before the evaluator reads them
        return build_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))


def setup_cfg(args: Namespace) -> CfgNode:
    """Build the frozen config from ``--config-file`` and trailing ``opts``; register declared datasets."""
    cfg = get_cfg()
    add_maskext_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    prepare_datasets(cfg)
    default_setup(cfg, args)
    return cfg
