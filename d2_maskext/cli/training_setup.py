"""The config of a training tool's run, from its command line: ``--config-file`` plus overrides, the datasets
it declares registered, and Detectron2's ``default_setup`` (output folder, logging, seeds) applied.

It runs in every process ``launch`` starts, so each worker registers the declared datasets itself.
"""

from __future__ import annotations

from argparse import Namespace

from detectron2.config import CfgNode, LazyConfig
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import DictConfig, OmegaConf

from ..data import prepare_datasets
from .config_loading import read_yaml_config


def setup_cfg(args: Namespace) -> CfgNode:
    """The frozen YAML config from ``--config-file`` and trailing ``KEY VALUE`` opts; declared datasets
    registered and checked."""
    cfg = read_yaml_config(args.config_file, args.opts)
    cfg.freeze()
    prepare_datasets(cfg)
    default_setup(cfg, args)
    return cfg


def setup_lazy_config(args: Namespace) -> DictConfig:
    """The LazyConfig ``--config-file`` with its trailing ``key=value`` overrides; the plugin's own log
    messages go to ``train.output_dir`` too."""
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    setup_logger(OmegaConf.select(cfg, "train.output_dir"), distributed_rank=comm.get_rank(), name="d2_maskext")
    return cfg
