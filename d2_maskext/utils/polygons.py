"""Binary mask <-> polygons with holes, in the pixel-corner convention of COCO polygons.

A mask pixel ``(row, col)`` covers the square ``[col, col + 1] x [row, row + 1]``; pycocotools (and so
Detectron2's polygon rasterization and every polygon reader of the package) fills the pixels whose centre
lies inside a polygon. OpenCV's contours run through the *centres* of the border pixels, so a polygon made
of them loses half a pixel all round (a 20-pixel disc would come back at IoU ~0.9). Each ring is therefore
pushed half a pixel away from the foreground (outer rings grow, holes shrink) before Douglas-Peucker
simplification, which puts it on the pixel edges: rasterized back, it gives the mask's own pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pycocotools.mask as mask_util

HALF_PIXEL = 0.5
# Formats without holes (LabelMe, CVAT) write a hole as a polygon of its instance with this flag or
# attribute set true; the package's readers cut such polygons out of the instance.
HOLE_FLAG = "hole"


@dataclass(frozen=True)
class PolygonPart:
    """One connected part of a mask: its outer ring and its holes, each an ``(N, 2)`` array of x, y."""

    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = ()

    @property
    def area(self) -> float:
        return ring_area(self.exterior) - sum(ring_area(h) for h in self.holes)


@dataclass(frozen=True)
class Polygonized:
    """The parts kept for a mask and how many parts and holes ``min_area`` dropped."""

    parts: list[PolygonPart]
    dropped_parts: int = 0
    dropped_holes: int = 0


def ring_area(ring: np.ndarray) -> float:
    """Unsigned area of a closed ring (shoelace formula)."""
    x, y = ring[:, 0], ring[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))) / 2


def _signed_area2(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def offset_ring(ring: np.ndarray, distance: float, outward: bool) -> np.ndarray:
    """``ring`` (pixel centres, x, y) moved ``distance`` out of (``outward``) or into its interior.

    Mitre joins, with two points at convex turns over 90 degrees, so one-pixel-wide lines and single
    pixels (rings of one or two points, or with spurs that double back) become strips and squares.
    """
    keep = np.any(ring != np.roll(ring, 1, axis=0), axis=1)
    ring = ring[keep] if keep.any() else ring[:1]
    if len(ring) == 1:
        (x, y), d = ring[0], distance
        return np.array([[x - d, y - d], [x + d, y - d], [x + d, y + d], [x - d, y + d]])
    sign = 1.0 if _signed_area2(ring) >= 0 else -1.0
    sign = sign if outward else -sign
    incoming = ring - np.roll(ring, 1, axis=0)
    incoming /= np.linalg.norm(incoming, axis=1, keepdims=True)
    outgoing = np.roll(incoming, -1, axis=0)
    # (ty, -tx) points out of a ring with a positive shoelace sum (image axes, y down).
    n_in = sign * np.stack([incoming[:, 1], -incoming[:, 0]], axis=1)
    n_out = sign * np.stack([outgoing[:, 1], -outgoing[:, 0]], axis=1)
    cos = np.sum(n_in * n_out, axis=1)
    convex = sign * (incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]) >= 0
    points = []
    for k, p in enumerate(ring):
        if convex[k] and cos[k] < 1e-9:  # a mitre point would stick out far past its pixel
            points.append(p + distance * (n_in[k] + incoming[k]))
            points.append(p + distance * (n_out[k] - outgoing[k]))
        else:
            points.append(p + distance * (n_in[k] + n_out[k]) / (1 + cos[k]))
    return np.asarray(points)


def _simplify(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker (``cv2.approxPolyDP``); the ring as it was when simplifying would leave no area."""
    if tolerance <= 0:
        return ring
    simple = cv2.approxPolyDP(ring.astype(np.float32).reshape(-1, 1, 2), tolerance, True).reshape(-1, 2)
    return simple.astype(np.float64) if len(simple) >= 3 and ring_area(simple) > 0 else ring


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0, min_area: float = 0.0) -> Polygonized:
    """The connected parts of ``mask`` (8-connected, as OpenCV's contours) as polygons with holes.

    ``tolerance``: Douglas-Peucker distance in pixels. Parts and holes with an area under ``min_area``
    pixels are dropped (a dropped hole is filled) and counted. Works on the mask's bounding box only.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {mask.shape}")
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return Polygonized([])
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    crop = np.pad((mask[y0 : y1 + 1, x0 : x1 + 1] != 0).astype(np.uint8), 1)
    contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    # pixel (1, 1) of the padded crop is pixel (y0, x0); +0.5 moves to the pixel centre
    shift = np.array([x0 - 1 + HALF_PIXEL, y0 - 1 + HALF_PIXEL])

    def ring(k: int, outward: bool) -> np.ndarray:
        return _simplify(offset_ring(contours[k].reshape(-1, 2) + shift, HALF_PIXEL, outward), tolerance)

    parts, dropped_parts, dropped_holes = [], 0, 0
    for k, (_, _, first_child, parent) in enumerate(hierarchy[0] if contours else []):
        if parent >= 0:
            continue
        holes = []
        child = first_child
        while child >= 0:
            hole = ring(child, outward=False)
            if ring_area(hole) >= max(min_area, 1e-9):
                holes.append(hole)
            else:
                dropped_holes += 1
            child = hierarchy[0][child][0]
        part = PolygonPart(ring(k, outward=True), tuple(holes))
        if part.area >= max(min_area, 1e-9):
            parts.append(part)
        else:
            dropped_parts += 1
    return Polygonized(parts, dropped_parts, dropped_holes)


def rasterize_ring(ring: np.ndarray | Sequence[float], height: int, width: int) -> np.ndarray:
    """``height x width`` uint8 mask of the pixels whose centre lies in ``ring`` (``(N, 2)`` points or a flat
    ``[x0, y0, x1, y1, ...]`` list), as pycocotools fills it; none for fewer than 3 points (which
    pycocotools would take for a box)."""
    flat = np.asarray(ring, np.float64).ravel()
    if flat.size < 6:
        return np.zeros((height, width), np.uint8)
    rle = mask_util.frPyObjects([flat.tolist()], height, width)
    return mask_util.decode(mask_util.merge(rle))


def rings_to_mask(
    exteriors: Sequence[np.ndarray | Sequence[float]], holes: Sequence[np.ndarray | Sequence[float]], height: int, width: int
) -> np.ndarray:
    """Boolean mask of the pixels inside more ``exteriors`` than ``holes``.

    Formats without holes write them as separate rings of the instance without saying which part each
    belongs to; counting gets every case right, an island inside a part's hole included (two exteriors,
    one hole), as long as the parts do not overlap, which the parts of one mask never do.
    """
    coverage = np.zeros((height, width), np.int32)
    for ring in exteriors:
        coverage += rasterize_ring(ring, height, width)
    for ring in holes:
        coverage -= rasterize_ring(ring, height, width)
    return coverage > 0


def polygons_to_mask(parts: Sequence[PolygonPart], height: int, width: int) -> np.ndarray:
    """Boolean mask of ``parts``: each exterior filled, its holes cleared."""
    return rings_to_mask([part.exterior for part in parts], [h for part in parts for h in part.holes], height, width)
