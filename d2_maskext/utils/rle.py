"""Binary mask -> COCO compressed RLE, in the JSON-ready form every COCO file of the package uses."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util

# The Instances field of predicted masks kept as compressed RLEs (MODEL.MASKEXT.TILING.RLE_OUTPUT) instead of
# image-size ``pred_masks``; the evaluator and the prediction tool read either.
RLE_FIELD = "pred_masks_rle"


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


def label_map_rles(labels: np.ndarray) -> dict[int, dict]:
    """Compressed RLE of every instance of a label map (0 is background, every other value one instance).

    Works on the runs of equal values in column-major order (the order of COCO RLE) instead of one
    full-size boolean mask per instance, so memory grows with the number of runs, not instances x pixels;
    each instance's runs become its uncompressed RLE, which pycocotools compresses exactly.
    """
    if labels.ndim != 2:
        raise ValueError(f"expected an H x W label map, got shape {labels.shape}")
    height, width = labels.shape
    flat = labels.ravel(order="F")
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    ends = np.append(starts[1:], flat.size)
    values = flat[starts]
    foreground = values != 0
    starts, ends, values = starts[foreground], ends[foreground], values[foreground]
    order = np.argsort(values, kind="stable")  # runs grouped by instance, each group in pixel order
    starts, ends, values = starts[order], ends[order], values[order]
    ids, first = np.unique(values, return_index=True)
    rles = {}
    for instance_id, lo, hi in zip(ids.tolist(), first, np.append(first[1:], values.size)):
        rles[instance_id] = runs_to_rle(starts[lo:hi], ends[lo:hi], height, width)
    return rles


def runs_to_rle(starts: np.ndarray, ends: np.ndarray, height: int, width: int) -> dict:
    """Compressed RLE (``counts`` as a string) of the foreground runs ``[starts[i], ends[i])`` of an
    ``height x width`` mask, as sorted, disjoint column-major pixel indices (the order of COCO RLE).

    The runs become uncompressed RLE counts, written as pycocotools' ``encode`` writes them, which
    pycocotools compresses exactly: no image-size array is ever allocated.
    """
    counts = np.empty(2 * starts.size + 1, np.int64)
    counts[0:-1:2] = starts - np.concatenate([[0], ends[:-1]])  # background before each run
    counts[1::2] = ends - starts
    counts[-1] = height * width - (ends[-1] if ends.size else 0)  # trailing background
    counts = counts if counts[-1] else counts[:-1]
    rle = mask_util.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
