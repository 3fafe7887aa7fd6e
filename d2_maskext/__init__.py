"""d2_maskext: a Detectron2 plugin for better Mask R-CNN.

Importing the package checks detectron2 and registers every plugin component (ROI heads, mask and box
heads, datasets, mappers) in Detectron2's registries. Stock components are untouched.
"""

from ._detectron2_check import check_detectron2

DETECTRON2_VERSION = check_detectron2()

from . import data, layers, modeling  # noqa: E402  (registration happens on import)
from .config import add_maskext_config  # noqa: E402
from .data.synthetic import register_builtin_synthetic  # noqa: E402

register_builtin_synthetic()

__version__ = "0.1.0"
__all__ = ["DETECTRON2_VERSION", "add_maskext_config", "data", "layers", "modeling"]
