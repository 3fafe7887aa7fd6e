"""d2_maskext: a Detectron2 plugin for better Mask R-CNN.

Importing the package checks detectron2 and registers every plugin component (ROI heads, mask and box
heads, datasets, mappers) in Detectron2's registries. Stock components are untouched.
"""

# The compatibility check runs first, so an unsuitable Detectron2 gives its clear error before anything else.
from ._compat import DETECTRON2_VERSION

# isort: split
from . import data, layers, modeling  # registration happens on import
from .config import add_maskext_config
from .data.synthetic import register_builtin_synthetic

register_builtin_synthetic()

__version__ = "0.1.0"
__all__ = ["DETECTRON2_VERSION", "add_maskext_config", "data", "layers", "modeling"]
