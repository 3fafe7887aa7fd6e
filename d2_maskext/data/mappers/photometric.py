"""Photometric augmentation (brightness, contrast, saturation, hue, lighting), an option of every plugin mapper.

Each of the five is an affine map of a pixel's colour, so one random draw is composed into a single 3x4
matrix and applied with one ``cv2.transform`` call: one pass over the image, rounding and clipping once,
instead of one float round trip per effect as with Detectron2's separate ``Random*`` augmentations.
Geometry and annotations are untouched.

``RAW`` images (float, any value range, N bands) are not clipped. Brightness and contrast apply to every
band (contrast around the image's mean over all bands). Saturation and hue need colour: they apply to
3-band images only (bands taken as RGB) and are left out for other band counts. Lighting is defined in
8-bit ImageNet units and is left out for every ``RAW`` image.
"""

from __future__ import annotations

from functools import partial

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T

from ...utils.image_io import RAW_FORMAT

_GRAY = np.array([0.299, 0.587, 0.114])  # RGB luma weights
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB_FROM_YIQ = np.linalg.inv(_YIQ)
# AlexNet's ImageNet RGB principal components (as in Detectron2's RandomLighting), for pixels in [0, 1].
_EIGEN_VECTORS = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
_EIGEN_VALUES = np.array([0.2175, 0.0188, 0.0045])


def _apply_color_affine(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return cv2.transform(image, matrix)


def _apply_gain(image: np.ndarray, gain: float, offset: float) -> np.ndarray:
    return image * np.float32(gain) + np.float32(offset)


class ColorJitter(T.Augmentation):
    """Random brightness, contrast and saturation factors in ``[1 - x, 1 + x]``, a hue rotation of up to
    ``hue`` turns, and AlexNet PCA lighting with standard deviation ``lighting``; 0 disables an effect."""

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        lighting: float = 0.0,
        image_format: str = "BGR",
    ) -> None:
        super().__init__()
        if image_format not in ("BGR", "RGB", RAW_FORMAT):
            raise ValueError(f"photometric augmentation needs INPUT.FORMAT 'BGR', 'RGB' or 'RAW', got {image_format!r}")
        self._init(locals())
        # Works in RGB; this permutation converts between RGB and the image's channel order (both ways).
        self._order = [2, 1, 0] if image_format == "BGR" else [0, 1, 2]

    def get_transform(self, image: np.ndarray) -> T.Transform:
        if image.ndim == 2 or image.shape[2] != 3:  # RAW with other than 3 bands
            return self._band_transform(image)
        matrix, offset = np.eye(3), np.zeros(3)

        def then(step: np.ndarray, shift: np.ndarray | float = 0.0) -> None:
            nonlocal matrix, offset
            matrix, offset = step @ matrix, step @ offset + shift

        if self.brightness:
            then(np.eye(3) * np.random.uniform(1 - self.brightness, 1 + self.brightness))
        if self.contrast:
            factor = np.random.uniform(1 - self.contrast, 1 + self.contrast)
            mean_rgb = matrix @ np.array(cv2.mean(image)[:3])[self._order] + offset
            then(np.eye(3) * factor, (1 - factor) * float(_GRAY @ mean_rgb))
        if self.saturation:
            factor = np.random.uniform(1 - self.saturation, 1 + self.saturation)
            then(factor * np.eye(3) + (1 - factor) * np.outer(np.ones(3), _GRAY))
        if self.hue:
            angle = 2 * np.pi * np.random.uniform(-self.hue, self.hue)
            c, s = np.cos(angle), np.sin(angle)
            rotation = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
            then(_RGB_FROM_YIQ @ rotation @ _YIQ)
        if self.lighting and self.image_format != RAW_FORMAT:
            alpha = np.random.normal(scale=self.lighting, size=3)
            then(np.eye(3), 255.0 * _EIGEN_VECTORS @ (alpha * _EIGEN_VALUES))
        order = self._order
        affine = np.hstack([matrix[np.ix_(order, order)], offset[order, None]])
        return T.ColorTransform(partial(_apply_color_affine, matrix=affine))

    def _band_transform(self, image: np.ndarray) -> T.Transform:
        """Brightness and contrast, the same gain on every band."""
        gain, offset = 1.0, 0.0
        if self.brightness:
            gain = np.random.uniform(1 - self.brightness, 1 + self.brightness)
        if self.contrast:
            factor = np.random.uniform(1 - self.contrast, 1 + self.contrast)
            gain, offset = factor * gain, (1 - factor) * gain * float(image.mean())
        return T.ColorTransform(partial(_apply_gain, gain=gain, offset=offset))


def build_photometric_augmentation(cfg: CfgNode) -> list[T.Augmentation]:
    """``[ColorJitter]`` from ``INPUT.PHOTOMETRIC`` when enabled, else ``[]`` (training only)."""
    p = cfg.INPUT.PHOTOMETRIC
    if not p.ENABLED:
        return []
    return [ColorJitter(p.BRIGHTNESS, p.CONTRAST, p.SATURATION, p.HUE, p.LIGHTING, cfg.INPUT.FORMAT)]
