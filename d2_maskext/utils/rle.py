"""Binary mask -> COCO compressed RLE, in the JSON-ready form every COCO file of the package uses."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util


def mask_to_rle(mask: np.ndarray) -> dict:
    """Compressed RLE of an ``H x W`` mask (any dtype; nonzero is foreground) with ``counts`` as a string.

    RLE is exact (holes and several parts included), unlike polygons; pycocotools returns ``counts`` as
    bytes, which JSON cannot hold.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {mask.shape}")
    rle = mask_util.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
