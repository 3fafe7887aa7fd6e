"""RoIAlign op (compiled, with a PyTorch fallback) and poolers."""

from ._ext import HAS_C_EXT
from .pooler import convert_pooler

__all__ = ["HAS_C_EXT", "convert_pooler"]
