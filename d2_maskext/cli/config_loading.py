"""One way for every tool to read a config: a YAML config or a LazyConfig ``.py`` file, with overrides.

Tools that only run a model (prediction, export, analysis) must not need the training data on disk, so
loading a config registers the datasets it declares but loads none of them; class names come from the
test dataset's metadata, which is read without loading the images or annotations whenever it can be.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg, instantiate
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..checkpoint import SafeCheckpointer
from ..config import add_maskext_config, lazy_dataset_names
from ..data import prepare_datasets, register_declared_datasets, registered_source
from ..data.mappers import build_mapper

logger = logging.getLogger(__name__)

YAML_SUFFIXES = (".yaml", ".yml")
LAZY_SUFFIX = ".py"

# Config functions of Detectron2 projects, as "module:function". A YAML config (or override) that sets any key
# one of them adds gets that function applied before it is merged; importing the module also registers the
# project's heads. ``register_project_config`` adds a project of your own.
PROJECT_CONFIGS: list[str] = ["detectron2.projects.point_rend:add_pointrend_config"]


def register_project_config(add_config: str) -> None:
    """Make the YAML tools accept the keys that ``add_config`` ("module:function", e.g. a project's
    ``add_x_config``) adds, whenever a config file or override sets one of them."""
    module, _, name = add_config.partition(":")
    if not module or not name:
        raise ValueError(f"register_project_config wants 'module:function', got {add_config!r}")
    if add_config not in PROJECT_CONFIGS:
        PROJECT_CONFIGS.append(add_config)


def _flat_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _flat_keys(value, f"{prefix}{key}.")
    return keys


def _project_config_function(add_config: str) -> Callable[[CfgNode], Any]:
    module, _, name = add_config.partition(":")
    return getattr(importlib.import_module(module), name)


def read_yaml_config(path: str | Path, opts: Sequence[str] = ()) -> CfgNode:
    """The YAML config at ``path`` (its ``_BASE_`` chain included) with ``KEY VALUE`` ``opts``, on Detectron2's
    defaults plus the plugin's keys plus the keys of every Detectron2 project (:data:`PROJECT_CONFIGS`) whose
    keys it sets. Not frozen."""
    cfg = add_maskext_config(get_cfg())
    wanted = _flat_keys(CfgNode.load_yaml_with_base(str(path), allow_unsafe=True)) | set(opts[0::2])
    for add_config in PROJECT_CONFIGS:
        add_keys = _project_config_function(add_config)
        probe = get_cfg()
        before = _flat_keys(probe)
        add_keys(probe)
        if (_flat_keys(probe) - before) & wanted:
            add_keys(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(list(opts))
    return cfg


def is_lazy_config(path: str | Path) -> bool:
    """Whether ``path`` is a LazyConfig Python file (else a YAML config)."""
    suffix = Path(path).suffix
    if suffix not in (*YAML_SUFFIXES, LAZY_SUFFIX):
        raise ValueError(f"{path}: a config is a YAML file ({', '.join(YAML_SUFFIXES)}) or a LazyConfig .py file")
    return suffix == LAZY_SUFFIX


def parse_overrides(opts: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, value)`` pairs from Detectron2's ``KEY VALUE`` pairs, LazyConfig's ``key=value`` items, or both.

    An item at a key's position that holds ``=`` is a whole ``key=value``; otherwise the next item is
    its value. So ``MODEL.WEIGHTS a=b.pth`` keeps its value intact.
    """
    pairs, items = [], list(opts)
    while items:
        item = items.pop(0)
        if "=" in item:
            key, value = item.split("=", 1)
        elif items:
            key, value = item, items.pop(0)
        else:
            raise ValueError(f"config override {item!r} has no value: write 'KEY VALUE' or 'key=value'")
        if not key:
            raise ValueError(f"config override {item!r} has no key")
        pairs.append((key, value))
    return pairs


@dataclass
class LoadedConfig:
    """A YAML (``CfgNode``) or lazy (``DictConfig``) config, with what the tools ask of either."""

    path: Path
    config: CfgNode | DictConfig

    @property
    def is_lazy(self) -> bool:
        return isinstance(self.config, DictConfig)

    @property
    def weights(self) -> str:
        """``MODEL.WEIGHTS`` or ``train.init_checkpoint``."""
        if self.is_lazy:
            return str(OmegaConf.select(self.config, "train.init_checkpoint", default="") or "")
        return self.config.MODEL.WEIGHTS

    @property
    def device(self) -> str:
        """``MODEL.DEVICE`` or ``train.device``."""
        if self.is_lazy:
            return str(OmegaConf.select(self.config, "train.device", default="cpu"))
        return self.config.MODEL.DEVICE

    @property
    def output_dir(self) -> str:
        if self.is_lazy:
            return str(OmegaConf.select(self.config, "train.output_dir", default="./output"))
        return self.config.OUTPUT_DIR

    @property
    def allow_unsafe_pickle(self) -> bool:
        """``CHECKPOINT.ALLOW_UNSAFE_PICKLE`` or ``train.checkpointer.allow_unsafe_pickle``."""
        if self.is_lazy:
            return bool(OmegaConf.select(self.config, "train.checkpointer.allow_unsafe_pickle", default=False))
        return self.config.CHECKPOINT.ALLOW_UNSAFE_PICKLE

    @property
    def num_classes(self) -> int:
        if self.is_lazy:
            value = OmegaConf.select(self.config, "model.roi_heads.num_classes")
            if value is None:
                raise ValueError(f"{self.path}: model.roi_heads.num_classes is not set")
            return int(value)
        return self.config.MODEL.ROI_HEADS.NUM_CLASSES

    @property
    def train_dataset_names(self) -> list[str]:
        if self.is_lazy:
            return lazy_dataset_names(self.config, "train")
        return list(self.config.DATASETS.TRAIN)

    @property
    def test_dataset_name(self) -> str | None:
        """The first test dataset, whose metadata names the model's classes; None if the config has none."""
        if self.is_lazy:
            names = lazy_dataset_names(self.config, "test")
        else:
            names = list(self.config.DATASETS.TEST)
        return names[0] if names else None

    @property
    def input_format(self) -> str:
        """Channel order the model expects (``BGR`` or ``RGB``)."""
        if self.is_lazy:
            return str(OmegaConf.select(self.config, "model.input_format", default="BGR"))
        return self.config.INPUT.FORMAT

    def test_resize(self) -> T.Augmentation:
        """The test-time resize: ``INPUT.MIN/MAX_SIZE_TEST``, or the lazy test mapper's only augmentation."""
        if not self.is_lazy:
            size = self.config.INPUT.MIN_SIZE_TEST
            return T.ResizeShortestEdge([size, size], self.config.INPUT.MAX_SIZE_TEST)
        augmentations = OmegaConf.select(self.config, "dataloader.test.mapper.augmentations")
        if augmentations is None or len(augmentations) != 1:
            raise ValueError(
                f"{self.path}: dataloader.test.mapper.augmentations must hold exactly one resize, got {augmentations}"
            )
        return instantiate(augmentations[0])

    def metadata(self) -> Metadata:
        """Class names (``thing_classes``, one per model class) and, when known, the dataset category ids.

        Read from the test dataset's metadata; a dataset that sets it only when loaded is loaded (the test
        dataset only, never a training one). Without a test dataset, or if it cannot be read, classes are
        named by their index, with a warning.
        """
        name = self.test_dataset_name
        metadata = _test_metadata(name) if name is not None else None
        num_classes = self.num_classes
        if metadata is None:
            logger.warning("%s: no class names (no readable test dataset); classes are named by index", self.path)
            return Metadata(thing_classes=[str(i) for i in range(num_classes)])
        classes = list(metadata.get("thing_classes"))
        if len(classes) != num_classes:
            raise ValueError(
                f"{self.path}: the model predicts {num_classes} classes but test dataset '{name}' has "
                f"{len(classes)}: {classes[:10]}"
            )
        fields = {"thing_classes": classes}
        mapping = metadata.get("thing_dataset_id_to_contiguous_id")
        if mapping:
            fields["thing_dataset_id_to_contiguous_id"] = dict(mapping)
        return Metadata(**fields)

    def class_names(self) -> list[str]:
        return list(self.metadata().thing_classes)

    def build_train_loader(self) -> Iterable[list[dict]]:
        """The (endless) training loader with the config's mapper; loads and checks the training datasets."""
        if self.is_lazy:
            return instantiate(self.config.dataloader.train)
        prepare_datasets(self.config)
        return build_detection_train_loader(self.config, mapper=build_mapper(self.config, is_train=True))

    def build_test_loader(self) -> Iterable[list[dict]]:
        """The loader of the first test dataset, with the config's test-time mapper."""
        if self.is_lazy:
            return instantiate(self.config.dataloader.test)
        name = self.test_dataset_name
        if name is None:
            raise ValueError(f"{self.path}: DATASETS.TEST is empty; name a dataset to run the model on")
        return build_detection_test_loader(self.config, name, mapper=build_mapper(self.config, is_train=False))

    def build_model(self) -> nn.Module:
        """The model on the config's device, in eval mode, with freshly initialised weights."""
        if self.is_lazy:
            model = instantiate(self.config.model).to(torch.device(self.device))
        else:
            model = build_model(self.config)
        return model.eval()

    def load_weights(self, model: nn.Module, weights: str | None = None) -> None:
        """Load ``weights`` (default: the config's) through :class:`SafeCheckpointer`; no file is an error."""
        path = self.weights if weights is None else weights
        if not path:
            raise ValueError(
                f"{self.path}: no weights to load; set MODEL.WEIGHTS (YAML) or train.init_checkpoint (lazy config)"
            )
        SafeCheckpointer(model, allow_unsafe_pickle=self.allow_unsafe_pickle).load(path)

    def build_inference_model(self, weights: str | None = None) -> nn.Module:
        """:meth:`build_model` with :meth:`load_weights` applied."""
        model = self.build_model()
        self.load_weights(model, weights)
        return model


def _test_metadata(name: str) -> Metadata | None:
    if name not in DatasetCatalog.list():
        logger.warning("test dataset '%s' is not registered", name)
        return None
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes") is None:
        source = registered_source(name)
        if source is not None and isinstance(source.thing_classes, tuple):
            return Metadata(thing_classes=list(source.thing_classes))
        try:
            DatasetCatalog.get(name)  # sets thing_classes for datasets that learn them from their files
        except (OSError, ValueError) as e:
            logger.warning("cannot read test dataset '%s' for its class names: %s", name, e)
            return None
    return metadata if metadata.get("thing_classes") is not None else None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> LoadedConfig:
    """Read a YAML or LazyConfig file, apply ``overrides`` (``KEY VALUE`` pairs or ``key=value`` items)
    and register the datasets it declares (``DATASETS.REGISTER``) without loading any of them.

    A YAML config gets the plugin's keys first; it is returned frozen. A lazy config is a ``DictConfig``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    pairs = parse_overrides(overrides)
    if is_lazy_config(path):
        config: Any = LazyConfig.load(str(path))
        LazyConfig.apply_overrides(config, [f"{key}={value}" for key, value in pairs])
        return LoadedConfig(path, config)
    cfg = read_yaml_config(path, [item for pair in pairs for item in pair])
    cfg.freeze()
    register_declared_datasets(cfg)
    return LoadedConfig(path, cfg)
