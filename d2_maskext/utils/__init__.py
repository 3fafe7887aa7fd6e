"""Small helpers shared by several layers of the package (the bottom layer: imports nothing of it)."""

from .atomic_file import atomic_open, remove_stale_temp_files
from .rle import mask_to_rle

__all__ = ["atomic_open", "mask_to_rle", "remove_stale_temp_files"]
