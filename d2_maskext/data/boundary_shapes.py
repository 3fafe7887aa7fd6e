"""Shapes of the boundary-stress synthetic split: large objects whose outlines a 28x28 mask cannot follow.

Gears (many narrow teeth, a bore), spoked wheels (thin rim and spokes, holes between them), letters (strokes
a few pixels wide, counters), branching twigs and spirals (thin, deeply concave). At 150-500 px, a tooth or
spoke is narrower than one cell of a 28x28 mask, so heads that resolve boundaries finer can be told apart.
"""

from __future__ import annotations

import cv2
import numpy as np

BOUNDARY_CLASSES: tuple[str, ...] = ("gear", "wheel", "letter", "branch", "spiral")
LETTERS = "ABEGKMRSWXZ"
_SHIFT = 4  # OpenCV fixed-point bits: sub-pixel vertex precision of 1/16 px


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _polygon(canvas: np.ndarray, points: np.ndarray, value: int) -> None:
    cv2.fillPoly(canvas, [_fixed(points)], value, lineType=cv2.LINE_8, shift=_SHIFT)


def _disc(canvas: np.ndarray, center: np.ndarray, radius: float, value: int) -> None:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    _polygon(canvas, center + radius * np.stack([np.cos(t), np.sin(t)], axis=1), value)


def _stroke(canvas: np.ndarray, points: np.ndarray, width: float, closed: bool = False) -> None:
    thickness = max(2, int(round(width)))
    cv2.polylines(canvas, [_fixed(points)], closed, 1, thickness, lineType=cv2.LINE_8, shift=_SHIFT)


def _gear(canvas: np.ndarray, center: np.ndarray, r: float, rng: np.random.Generator) -> None:
    teeth = int(rng.integers(10, 22))
    root = r * (1 - rng.uniform(0.12, 0.2))
    radii = np.tile([r, r, root, root], teeth)
    angles = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, 4 * teeth, endpoint=False)
    _polygon(canvas, center + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1), 1)
    _disc(canvas, center, r * rng.uniform(0.15, 0.3), 0)
    holes = int(rng.integers(0, 6))
    for k in range(holes):  # lightening holes between bore and teeth
        a = 2 * np.pi * k / max(holes, 1)
        _disc(canvas, center + 0.58 * root * np.array([np.cos(a), np.sin(a)]), 0.13 * root, 0)


def _wheel(canvas: np.ndarray, center: np.ndarray, r: float, rng: np.random.Generator) -> None:
    rim = r * rng.uniform(0.07, 0.13)
    _disc(canvas, center, r, 1)
    _disc(canvas, center, r - rim, 0)
    spokes, width = int(rng.integers(3, 9)), r * rng.uniform(0.035, 0.07)
    for a in rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, spokes, endpoint=False):
        _stroke(canvas, np.stack([center, center + (r - rim / 2) * np.array([np.cos(a), np.sin(a)])]), width)
    _disc(canvas, center, r * rng.uniform(0.1, 0.18), 1)


def _letter(canvas: np.ndarray, center: np.ndarray, r: float, rng: np.random.Generator) -> None:
    """A letter drawn upright in its own patch, rotated, and pasted (clipped at the image border)."""
    side = int(np.ceil(2 * r)) + 8
    patch = np.zeros((side, side), np.uint8)
    letter = LETTERS[int(rng.integers(len(LETTERS)))]
    thickness = max(2, int(round(r * rng.uniform(0.1, 0.18))))
    font = cv2.FONT_HERSHEY_DUPLEX
    (w, h), _ = cv2.getTextSize(letter, font, 1.0, thickness)
    scale = 1.3 * r / max(w, h)
    (w, h), _ = cv2.getTextSize(letter, font, scale, thickness)
    cv2.putText(patch, letter, ((side - w) // 2, (side + h) // 2), font, scale, 1, thickness, cv2.LINE_8)
    rotation = cv2.getRotationMatrix2D((side / 2, side / 2), float(rng.uniform(-180, 180)), 1.0)
    patch = cv2.warpAffine(patch, rotation, (side, side), flags=cv2.INTER_NEAREST)
    y0, x0 = (int(round(c - side / 2)) for c in center[::-1])
    ys, xs = slice(max(y0, 0), min(y0 + side, canvas.shape[0])), slice(max(x0, 0), min(x0 + side, canvas.shape[1]))
    canvas[ys, xs] |= patch[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def _branch(canvas: np.ndarray, center: np.ndarray, r: float, rng: np.random.Generator) -> None:
    """A twig: a trunk through ``center`` splitting into 2-3 thinner branches, three levels deep."""
    heading = rng.uniform(0, 2 * np.pi)
    stack = [(center - 0.9 * r * np.array([np.cos(heading), np.sin(heading)]), heading, 0.9 * r, r * 0.14, 0)]
    while stack:
        start, angle, length, width, depth = stack.pop()
        end = start + length * np.array([np.cos(angle), np.sin(angle)])
        _stroke(canvas, np.stack([start, end]), width)
        if depth < 3:
            for _ in range(int(rng.integers(2, 4))):
                turn = rng.uniform(0.35, 0.8) * rng.choice([-1, 1])
                stack.append((end, angle + turn, length * rng.uniform(0.45, 0.65), width * 0.65, depth + 1))


def _spiral(canvas: np.ndarray, center: np.ndarray, r: float, rng: np.random.Generator) -> None:
    turns = rng.uniform(1.5, 2.8)
    t = np.linspace(0, 2 * np.pi * turns, int(200 * turns))
    radius = r * (0.12 + 0.88 * t / t[-1])
    phase = rng.uniform(0, 2 * np.pi) * rng.choice([-1, 1])
    points = center + radius[:, None] * np.stack([np.cos(t + phase), np.sin(t + phase)], axis=1)
    _stroke(canvas, points, r * rng.uniform(0.06, 0.1))


_DRAW = {"gear": _gear, "wheel": _wheel, "letter": _letter, "branch": _branch, "spiral": _spiral}


def draw_boundary_shape(
    cls: int, canvas: np.ndarray, center: np.ndarray, size: float, rng: np.random.Generator
) -> None:
    """Draw ``BOUNDARY_CLASSES[cls]`` with diameter ~``size`` into the uint8 ``canvas`` (1 = object)."""
    _DRAW[BOUNDARY_CLASSES[cls]](canvas, np.asarray(center, np.float64), size / 2, rng)
