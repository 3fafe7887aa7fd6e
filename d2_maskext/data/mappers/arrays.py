"""Array helpers that give the same values as Detectron2's transforms but keep arrays C-contiguous.

Detectron2's flips return negative-stride views and pycocotools decodes masks in Fortran order; every later
``Image.fromarray`` or ``np.ascontiguousarray`` then copies them element by element, which costs more than
the resizing itself on large images. OpenCV does the same copies at memory speed.
"""

from __future__ import annotations

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import transforms as T

_OPENCV_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64))


def apply_contiguous(tfm: T.Transform, array: np.ndarray, segmentation: bool = False) -> np.ndarray:
    """``tfm.apply_image`` (or ``apply_segmentation``) on ``array``, returning a C-contiguous result."""
    if isinstance(tfm, T.TransformList):
        for t in tfm.transforms:
            array = apply_contiguous(t, array, segmentation)
        return array
    flip_code = {T.HFlipTransform: 1, T.VFlipTransform: 0}.get(type(tfm))
    if flip_code is not None and array.dtype in _OPENCV_DTYPES:
        return cv2.flip(array, flip_code).reshape(array.shape)  # OpenCV drops a trailing channel axis of 1
    out = tfm.apply_segmentation(array) if segmentation else tfm.apply_image(array)
    return out if out.flags.c_contiguous else np.ascontiguousarray(out)


class ContiguousAugInput(T.AugInput):
    """``AugInput`` whose image stays C-contiguous through every transform."""

    def transform(self, tfm: T.Transform) -> None:
        self.image = apply_contiguous(tfm, self.image)
        if self.boxes is not None:
            self.boxes = tfm.apply_box(self.boxes)
        if self.sem_seg is not None:
            self.sem_seg = tfm.apply_segmentation(self.sem_seg)


def decode_rle(rle: dict) -> np.ndarray:
    """A COCO RLE as a C-contiguous (H, W) uint8 mask (pycocotools returns Fortran order)."""
    return cv2.transpose(mask_util.decode(rle).T)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC array to the CHW tensor Detectron2's models take (same values as ``transpose(2, 0, 1)``)."""
    return torch.from_numpy(np.stack(cv2.split(image)))
