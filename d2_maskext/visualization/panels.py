"""Draw COCO-format instances (ground truth or results) on images and put panels side by side."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from detectron2.utils.visualizer import Visualizer
from pycocotools.coco import COCO

from ..utils.display import to_display_rgb
from ..utils.image_io import RAW_FORMAT, ImageReadError, needs_raw, read_image

logger = logging.getLogger(__name__)

RGB = tuple[float, float, float]


def read_image_or_blank(path: str | Path | None, height: int, width: int) -> tuple[np.ndarray, bool]:
    """RGB image at ``path`` (16-bit, float and multi-band files percentile-stretched by ``to_display_rgb``); a
    gray canvas of the annotated size (and False) when it cannot be read."""
    if path is not None:
        try:
            if needs_raw(path):
                return to_display_rgb(read_image(path, RAW_FORMAT)), True
            return read_image(path, "RGB"), True
        except ImageReadError as e:
            logger.warning("cannot read image %s (%s); drawing on a blank canvas", path, e)
    return np.full((height, width, 3), 128, dtype=np.uint8), False


def draw_coco_instances(
    image_rgb: np.ndarray,
    coco: COCO,
    anns: Sequence[dict],
    labels: Sequence[str],
    colors: Sequence[RGB],
    scale: float = 1.0,
) -> np.ndarray:
    """Boxes and masks of COCO ``anns`` (masks through ``coco.annToRLE``, so polygons and RLE both work)."""
    vis = Visualizer(image_rgb, scale=scale)
    if anns:
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=float)
        masks = [coco.annToRLE(a) for a in anns] if all("segmentation" in a for a in anns) else None
        vis.overlay_instances(boxes=boxes, masks=masks, labels=list(labels), assigned_colors=list(colors))
    return vis.get_output().get_image()


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 6) -> np.ndarray:
    """Two RGB images next to each other on a white background."""
    height = max(left.shape[0], right.shape[0])
    out = np.full((height, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap :] = right
    return out
