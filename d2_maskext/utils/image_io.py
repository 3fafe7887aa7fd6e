"""Reading image and mask files safely: clear errors, Pillow's decompression-bomb limit honoured.

``read_image`` returns exactly the pixels of Detectron2's ``read_image`` (same decoder, same EXIF
handling) but converts RGB to BGR with OpenCV into a contiguous array, which later steps copy far faster
than the negative-stride view Detectron2 returns.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image

from .._compat import apply_exif_orientation

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_EXIF_ORIENTATION = 274
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class ImageReadError(OSError):
    """An image or mask file could not be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str, missing: bool = False) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason
        self.missing = missing

    def __reduce__(self):  # picklable across data-loader workers despite the custom signature
        return type(self), (self.path, self.reason, self.missing)


def _decode(path: str | os.PathLike, decode, data: bytes | None = None):
    """Open ``path`` (or ``data``, the file's bytes already in memory, named ``path`` in errors) with Pillow and
    run ``decode(image)`` inside the open file, translating every failure.

    Pillow warns above ``Image.MAX_IMAGE_PIXELS`` and raises above twice that; both are refused here.
    """
    try:
        opened = io.BytesIO(data) if data is not None else PathManager.open(os.fspath(path), "rb")
        with opened as f, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return decode(Image.open(f))
    except FileNotFoundError as e:
        raise ImageReadError(path, "file not found", missing=True) from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(
            path,
            f"refused as a possible decompression bomb ({e}); PIL.Image.MAX_IMAGE_PIXELS is "
            f"{Image.MAX_IMAGE_PIXELS}: raise it only for images you trust",
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # any decoder failure means the file is unreadable
        raise ImageReadError(path, f"cannot decode image: {type(e).__name__}: {e}") from e


def read_image(path: str | os.PathLike, image_format: str | None) -> np.ndarray:
    """Decode an image in ``image_format`` (as Detectron2's ``read_image``), raising ``ImageReadError``."""

    def decode(image: Image.Image) -> np.ndarray:
        image = apply_exif_orientation(image)
        if image_format == "BGR":
            return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
        return convert_PIL_to_numpy(image, image_format)

    return _decode(path, decode)


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    # A PNG's EXIF block after the pixel data would need a full decode; Detectron2 would apply it, but
    # such files are vanishingly rare, so only EXIF that is known from the header is considered.
    if image.format != "PNG" or "exif" in image.info:
        try:
            if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
                return width, height
        except Exception:  # broken EXIF: Detectron2 ignores it as well
            pass
    return height, width


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` after EXIF orientation, from the header only (no pixel decoding)."""
    return _decode(path, _oriented_size)


def decoded_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` after fully decoding the pixels, which catches truncated or corrupt files."""

    def decode(image: Image.Image) -> tuple[int, int]:
        image.load()
        return _oriented_size(image)

    return _decode(path, decode)


def _label_array(image: Image.Image) -> np.ndarray:
    if image.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise ValueError(f"expected a single-channel PNG, got mode {image.mode}")
    return np.asarray(image)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A single-channel PNG (binary mask or instance ids; 1-, 8- or 16-bit, or palette indices) as a 2-D array."""
    return _decode(path, _label_array)


def decode_label_png(data: bytes, name: str) -> np.ndarray:
    """``read_label_png`` for PNG bytes in memory (LabelMe's base64 masks); errors name ``name``."""
    return _decode(name, _label_array, data)


def list_images(root: Path, exclude: Path | None = None) -> list[Path]:
    """Image files under ``root`` (recursive, sorted), as paths relative to ``root``; ``exclude`` is skipped."""
    skip = os.path.abspath(exclude) if exclude is not None else None
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            if skip is not None and os.path.commonpath([skip, os.path.abspath(path)]) == skip:
                continue
            found.append(path.relative_to(root))
    return found
