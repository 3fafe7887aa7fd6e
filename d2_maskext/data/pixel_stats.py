"""Per-channel mean and standard deviation of a dataset's images, for ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``.

ImageNet's values fit 8-bit photos only; 16-bit, float and multi-band images (``INPUT.FORMAT "RAW"``) need
their own. Images are read one at a time and combined with Chan et al.'s parallel variance formula in
float64, so memory stays at one image and the result is exact to float64 rounding however many pixels
there are (a naive sum of squares loses all precision on 16-bit data).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..utils.image_io import ImageReadError, read_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PixelStats:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_images: int
    num_pixels: int  # per channel
    skipped: tuple[str, ...]  # unreadable images, left out

    def yaml(self) -> str:
        """The ``MODEL.PIXEL_MEAN`` and ``MODEL.PIXEL_STD`` lines, ready to paste into a YAML config (a
        constant channel's std of 0 is written as 1, which would otherwise divide by zero)."""
        std = [s if s > 0 else 1.0 for s in self.std]
        return f"MODEL:\n  PIXEL_MEAN: [{_numbers(self.mean)}]\n  PIXEL_STD: [{_numbers(std)}]"


def _numbers(values: Sequence[float]) -> str:
    """Six significant digits, always with a decimal point (YAML reads ``1e-05`` as a string)."""
    return ", ".join(np.format_float_positional(v, precision=6, unique=False, fractional=False, trim="0") for v in values)


def compute_pixel_stats(
    file_names: Sequence[str], image_format: str, max_images: int | None = None, desc: str = "pixel statistics"
) -> PixelStats:
    """Statistics of the images ``file_names`` read as the model reads them (``image_format``); with
    ``max_images``, of that many images spread evenly over the list. Unreadable images are skipped, counted
    and logged; images with different channel counts stop with an error naming the file."""
    if max_images is not None and 0 < max_images < len(file_names):
        picks = np.linspace(0, len(file_names) - 1, max_images).round().astype(int)
        file_names = [file_names[i] for i in picks]
    count, mean, m2 = 0, None, None
    skipped: list[str] = []
    first = None
    for file_name in tqdm(file_names, desc=desc, unit="img"):
        try:
            image = read_image(file_name, image_format)
        except ImageReadError as e:
            logger.warning("skipping %s: %s", file_name, e.reason)
            skipped.append(file_name)
            continue
        pixels = image.reshape(-1, image.shape[2] if image.ndim == 3 else 1).astype(np.float64)
        if mean is None:
            first, mean, m2 = file_name, np.zeros(pixels.shape[1]), np.zeros(pixels.shape[1])
        elif pixels.shape[1] != mean.size:
            raise ValueError(f"{file_name}: {pixels.shape[1]} channel(s), but {first} has {mean.size}")
        n = pixels.shape[0]
        image_mean = pixels.mean(axis=0)
        delta = image_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + ((pixels - image_mean) ** 2).sum(axis=0) + delta**2 * (count * n / total)
        count = total
    if skipped:
        logger.warning("skipped %d of %d images that could not be read", len(skipped), len(file_names))
    if mean is None:
        raise ValueError(f"no readable image among {len(file_names)}")
    std = np.sqrt(m2 / count)
    return PixelStats(tuple(mean.tolist()), tuple(std.tolist()), len(file_names) - len(skipped), count, tuple(skipped))
