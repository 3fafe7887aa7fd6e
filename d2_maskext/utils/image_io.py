"""Reading image and mask files safely: clear errors, Pillow's decompression-bomb limit honoured.

``read_image`` returns exactly the pixels of Detectron2's ``read_image`` (same decoder, same EXIF
handling) but converts RGB to BGR with OpenCV into a contiguous array, which later steps copy far faster
than the negative-stride view Detectron2 returns. ``INPUT.FORMAT "RAW"`` reads 16-bit, float and
multi-band images (TIFF, PNG, ``.npy``) unclipped, as float32 with every channel.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import tifffile
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image

from .._compat import apply_exif_orientation

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".npy")
_EXIF_ORIENTATION = 274
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
logger = logging.getLogger(__name__)


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
        raise _decompression_bomb(path, str(e)) from e
    except MemoryError:
        raise
    except Exception as e:  # any decoder failure means the file is unreadable
        raise ImageReadError(path, f"cannot decode image: {type(e).__name__}: {e}") from e


RAW_FORMAT = "RAW"
# 8-bit formats in which high-bit-depth or many-band files lose information (Detectron2 clips them silently).
EIGHT_BIT_FORMATS = ("BGR", "RGB", "L")
_TIFF_EXTENSIONS = (".tif", ".tiff")
_lossy_read_warned = False


class ChannelCountError(ValueError):
    """A RAW image's channel count differs from the model's (``len(MODEL.PIXEL_MEAN)``)."""


def read_image(path: str | os.PathLike, image_format: str | None) -> np.ndarray:
    """Decode an image in ``image_format`` (as Detectron2's ``read_image``), raising ``ImageReadError``.

    ``"RAW"`` keeps the file's dtype range and every channel (see :func:`read_raw_image`). Under an 8-bit
    format a file with more than 8 bits, float values or more than 4 channels gets one warning per process.
    """
    if image_format == RAW_FORMAT:
        return read_raw_image(path)
    eight_bit_tiff = image_format in EIGHT_BIT_FORMATS and Path(path).suffix.lower() in _TIFF_EXTENSIONS
    if eight_bit_tiff and not _lossy_read_warned:  # a header parse per image only until the one warning is given
        _warn_if_lossy(path, _tiff_needs_raw(path), image_format)

    def decode(image: Image.Image) -> np.ndarray:
        if image_format in EIGHT_BIT_FORMATS and image.format != "TIFF":
            _warn_if_lossy(path, _pillow_needs_raw(image), image_format)
        image = apply_exif_orientation(image)
        if image_format == "BGR":
            return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
        return convert_PIL_to_numpy(image, image_format)

    try:
        return _decode(path, decode)
    except ImageReadError as e:
        if not (eight_bit_tiff and _tiff_needs_raw(path)):
            raise
        raise ImageReadError(path, f"{e.reason}; it has more than 8 bits or 4 channels: use INPUT.FORMAT 'RAW'") from e


def _pillow_needs_raw(image: Image.Image) -> bool:
    """Whether Pillow would reduce this image's pixels to 8 bits (16-bit, 32-bit integer or float modes)."""
    rawmodes = [tile[3] for tile in image.tile if isinstance(tile[3], str)]  # (codec, extents, offset, args)
    return image.mode in ("I", "F") or image.mode.startswith("I;16") or any(";16" in m for m in rawmodes)


def _tiff_needs_raw(path: str | os.PathLike) -> bool:
    """Whether a TIFF holds more than 8 bits or more than 4 channels (from its header; False if unparsable)."""
    try:
        with tifffile.TiffFile(os.fspath(path)) as tiff:
            series = tiff.series[0]
            return series.dtype != np.uint8 or _channel_count(series.shape, series.axes) > 4
    except Exception:  # Pillow reports unreadable files with the usual ImageReadError
        return False


def needs_raw(path: str | os.PathLike) -> bool:
    """Whether reading ``path`` in an 8-bit format would lose information: more than 8 bits, float values or
    more than 4 channels (``.npy`` files always). From the header; False for a file that cannot be opened."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return True
    if suffix in _TIFF_EXTENSIONS:
        return _tiff_needs_raw(path)
    try:
        return _decode(path, _pillow_needs_raw)
    except ImageReadError:
        return False


def _warn_if_lossy(path: str | os.PathLike, lossy: bool, image_format: str) -> None:
    """Warn once per process that ``path`` loses information in an 8-bit format, naming its dtype and range."""
    global _lossy_read_warned
    if not lossy or _lossy_read_warned:
        return
    _lossy_read_warned = True
    try:
        raw = read_raw_image(path, keep_dtype=True)
        what = f"{raw.dtype} with {raw.shape[2]} channel(s), values {raw.min():g} to {raw.max():g}"
    except ImageReadError as e:
        what = f"not 8-bit ({e.reason})"
    logger.warning(
        "%s is %s but INPUT.FORMAT is %r, which reduces it to 8-bit values (clipped) and at most 3 channels; "
        "set INPUT.FORMAT 'RAW' (with one MODEL.PIXEL_MEAN/PIXEL_STD value per channel) to keep its pixels. "
        "This warning is given once, for the first such image.",
        os.fspath(path),
        what,
        image_format,
    )


def _check_pixel_limit(path: str | os.PathLike, height: int, width: int) -> None:
    """Pillow's decompression-bomb limit, for decoders other than Pillow (checked from the header)."""
    if Image.MAX_IMAGE_PIXELS and height * width > Image.MAX_IMAGE_PIXELS:
        raise _decompression_bomb(path, f"{width}x{height} pixels")


def _decompression_bomb(path: str | os.PathLike, detail: str) -> ImageReadError:
    """The error for an image above Pillow's ``MAX_IMAGE_PIXELS``, whichever decoder found it."""
    return ImageReadError(
        path,
        f"refused as a possible decompression bomb ({detail}); PIL.Image.MAX_IMAGE_PIXELS is "
        f"{Image.MAX_IMAGE_PIXELS}: raise it only for images you trust",
    )


def _channel_count(shape: tuple[int, ...], axes: str) -> int:
    return 1 if len(shape) == 2 else shape[-1] if axes.endswith("S") else shape[0]


def _tiff_geometry(tiff: tifffile.TiffFile, path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of a TIFF's first series, from its header; refuses other layouts and bombs."""
    series = tiff.series[0]
    shape, axes = tuple(series.shape), series.axes
    if len(shape) == 2 or (len(shape) == 3 and axes.endswith("YXS")):
        height, width = shape[:2]
    elif len(shape) == 3 and axes.endswith("YX"):
        height, width = shape[1:]
    else:
        raise ValueError(f"expected a 2-D image with optional channels, got shape {shape} with axes {axes!r}")
    _check_pixel_limit(path, height, width)
    return height, width


def _read_tiff(path: str | os.PathLike) -> np.ndarray:
    """A TIFF's first series as HWC: interleaved samples (``YXS``) as they are, planar bands or pages
    (``CYX``, ``SYX``, ``QYX`` ...) moved last."""
    with tifffile.TiffFile(os.fspath(path)) as tiff:
        _tiff_geometry(tiff, path)
        axes = tiff.series[0].axes
        array = tiff.series[0].asarray()
    if array.ndim == 3 and not axes.endswith("S"):
        array = np.moveaxis(array, 0, -1)
    return array


def _npy_array(path: str | os.PathLike) -> np.ndarray:
    """A ``.npy`` file memory-mapped (header read only): numbers of shape (H, W) or (H, W, C), no pickles."""
    array = np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
    if array.ndim not in (2, 3) or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"expected a numeric (H, W) or (H, W, C) array, got shape {array.shape} of {array.dtype}")
    _check_pixel_limit(path, *array.shape[:2])
    return array


def _read_npy(path: str | os.PathLike) -> np.ndarray:
    return np.array(_npy_array(path))


def _read_with_opencv(path: str | os.PathLike) -> np.ndarray:
    """PNG and other formats at their full bit depth; colour comes back in the file's RGB(A) order."""
    height, width = image_size(path)  # Pillow's header check, decompression-bomb limit included
    _check_pixel_limit(path, height, width)
    with PathManager.open(os.fspath(path), "rb") as f:
        data = np.frombuffer(f.read(), np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("OpenCV cannot decode it")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return array


def read_raw_image(path: str | os.PathLike, keep_dtype: bool = False) -> np.ndarray:
    """The pixels of ``path`` as stored, HWC with every channel, as float32 (exact for 8- and 16-bit integers;
    ``keep_dtype`` returns the file's dtype instead): TIFF through tifffile, ``.npy`` (H, W[, C]) arrays, and
    PNG and other formats through OpenCV at full bit depth. Colour files keep their RGB order; EXIF
    orientation is not applied. Pillow's decompression-bomb limit holds here too."""
    suffix = Path(path).suffix.lower()
    reader = _read_tiff if suffix in _TIFF_EXTENSIONS else _read_npy if suffix == ".npy" else _read_with_opencv
    try:
        array = reader(path)
    except FileNotFoundError as e:
        raise ImageReadError(path, "file not found", missing=True) from e
    except (ImageReadError, MemoryError):
        raise
    except Exception as e:  # any decoder failure means the file is unreadable
        raise ImageReadError(path, f"cannot decode image: {type(e).__name__}: {e}") from e
    array = array[:, :, None] if array.ndim == 2 else array
    return np.ascontiguousarray(array if keep_dtype else array.astype(np.float32, copy=False))


def check_channel_count(image: np.ndarray, expected: int, path: str | os.PathLike) -> None:
    """Refuse a RAW image whose channel count is not the model's, naming the file and both numbers."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels != expected:
        raise ChannelCountError(
            f"{os.fspath(path)}: the image has {channels} channel(s) but the model takes {expected} "
            f"(len(MODEL.PIXEL_MEAN)); give MODEL.PIXEL_MEAN and MODEL.PIXEL_STD one value per channel"
        )


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


def _raw_header_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of a TIFF or ``.npy`` file from its header (tifffile / numpy, any band count)."""
    if Path(path).suffix.lower() == ".npy":
        return _npy_array(path).shape[:2]
    with tifffile.TiffFile(os.fspath(path)) as tiff:
        return _tiff_geometry(tiff, path)


def _is_raw_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in (*_TIFF_EXTENSIONS, ".npy")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` after EXIF orientation, from the header only (no pixel decoding). A TIFF or
    ``.npy`` file that Pillow cannot open (multi-band rasters, arrays) is measured by tifffile or numpy."""
    try:
        return _decode(path, _oriented_size)
    except ImageReadError as pillow_error:
        if pillow_error.missing or not _is_raw_file(path):
            raise
        return _raw_fallback(path, pillow_error, _raw_header_size)


def decoded_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` after fully decoding the pixels, which catches truncated or corrupt files."""

    def decode(image: Image.Image) -> tuple[int, int]:
        image.load()
        return _oriented_size(image)

    try:
        return _decode(path, decode)
    except ImageReadError as pillow_error:
        if pillow_error.missing or not _is_raw_file(path):
            raise
        return _raw_fallback(path, pillow_error, lambda p: read_raw_image(p, keep_dtype=True).shape[:2])


def _raw_fallback(path: str | os.PathLike, pillow_error: ImageReadError, measure) -> tuple[int, int]:
    """``measure(path)`` with the RAW readers; when they fail too, Pillow's error (the file is unreadable)."""
    try:
        return tuple(measure(path))
    except ImageReadError as e:
        if "decompression bomb" in e.reason:
            raise
        raise pillow_error from e
    except Exception as e:
        raise pillow_error from e


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


LABEL_MAP_EXTENSIONS = (".png", ".tif", ".tiff")


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """An instance or class label map as a 2-D integer array: a single-channel PNG (``read_label_png``) or a
    TIFF read with tifffile (8-, 16- or 32-bit integers; the first series, one channel)."""
    if Path(path).suffix.lower() not in _TIFF_EXTENSIONS:
        return read_label_png(path)
    labels = read_raw_image(path, keep_dtype=True)
    if labels.shape[2] != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ImageReadError(path, f"expected a single-channel integer label map, got {labels.shape[2]} {labels.dtype} channel(s)")
    return labels[:, :, 0]


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
