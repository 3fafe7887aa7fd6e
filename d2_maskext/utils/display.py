"""RAW images (16-bit, float, N bands) made viewable: a percentile stretch to 8-bit RGB.

Such images have no fixed white level (a 12-bit camera, a CT scan in Hounsfield units, reflectances in
[0, 1]), so each shown channel is stretched from its 1st to its 99th percentile, which also keeps a few
saturated or dead pixels from flattening the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0
_MAX_SAMPLES = 1 << 20  # percentiles from at most about this many pixels per channel (large rasters)


def _stretch(channel: np.ndarray) -> np.ndarray:
    step = max(1, int(np.sqrt(channel.size / _MAX_SAMPLES)))
    sample = channel[::step, ::step]
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return np.zeros(channel.shape, np.uint8)
    low, high = np.percentile(finite, [LOW_PERCENTILE, HIGH_PERCENTILE])
    scaled = (channel.astype(np.float32) - np.float32(low)) * np.float32(255.0 / max(high - low, 1e-12))
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).astype(np.uint8)


def to_display_rgb(image: np.ndarray, bands: int | Sequence[int] | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 RGB view of an (H, W[, C]) image of any dtype, each shown channel stretched from its
    1st to its 99th percentile. ``bands``: None shows the first three channels as RGB (the first one as grey
    when there are fewer than three), an int shows that band as grey, three ints show those bands as RGB."""
    image = image[:, :, None] if image.ndim == 2 else image
    channels = image.shape[2]
    if bands is None:
        chosen = [0, 1, 2] if channels >= 3 else [0, 0, 0]
    elif isinstance(bands, int):
        chosen = [bands] * 3
    else:
        chosen = list(bands)
        if len(chosen) != 3:
            raise ValueError(f"bands must be one band or three, got {chosen}")
    for band in chosen:
        if not -channels <= band < channels:
            raise ValueError(f"band {band} does not exist: the image has {channels} channel(s)")
    stretched = {band: _stretch(image[:, :, band]) for band in dict.fromkeys(chosen)}
    return np.stack([stretched[band] for band in chosen], axis=2)
