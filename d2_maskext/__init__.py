"""d2_maskext: a Detectron2 plugin for better Mask R-CNN.

Importing the package checks Detectron2 (:mod:`d2_maskext._compat`) and registers every plugin component
(ROI heads, mask and box heads, dataset formats, mappers, the built-in synthetic datasets, whose images are
generated only when first loaded) in Detectron2's registries. Stock components are untouched.

The names below are the public API. The trainer, checkpointer, report and prediction tool are imported on
first access, so ``import d2_maskext`` stays light and the package's own layers never import the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The compatibility check runs first, so an unsuitable Detectron2 gives its clear error before anything else.
from ._compat import DETECTRON2_VERSION

# isort: split
from . import data, layers, modeling  # registration happens on import
from .config import add_maskext_config
from .data import SyntheticSpec, register_dataset, register_synthetic, scan_dataset
from .data.mappers import build_mapper
from .data.synthetic import register_builtin_synthetic
from .evaluation import build_evaluator
from .layers import FusedROIPooler, roi_align
from .modeling import MaskExtROIHeads

if TYPE_CHECKING:
    from .checkpoint import SafeCheckpointer, UntrustedCheckpointError
    from .cli import setup_cfg
    from .engine import Trainer
    from .evaluation.report import ReportOptions, write_report, write_report_from_files
    from .predict import BatchPredictor

register_builtin_synthetic()

__version__ = "0.1.0"

_LAZY_NAMES: dict[str, str] = {
    "SafeCheckpointer": "checkpoint",
    "UntrustedCheckpointError": "checkpoint",
    "Trainer": "engine",
    "setup_cfg": "cli",
    "ReportOptions": "evaluation.report",
    "write_report": "evaluation.report",
    "write_report_from_files": "evaluation.report",
    "BatchPredictor": "predict",  # the function predict() is d2_maskext.predict.predict (name of its module)
}


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


__all__ = [
    "DETECTRON2_VERSION",
    "BatchPredictor",
    "FusedROIPooler",
    "MaskExtROIHeads",
    "ReportOptions",
    "SafeCheckpointer",
    "SyntheticSpec",
    "Trainer",
    "UntrustedCheckpointError",
    "add_maskext_config",
    "build_evaluator",
    "build_mapper",
    "data",
    "layers",
    "modeling",
    "register_dataset",
    "register_synthetic",
    "roi_align",
    "scan_dataset",
    "setup_cfg",
    "write_report",
    "write_report_from_files",
]
