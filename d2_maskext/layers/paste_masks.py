"""Pasting ``M x M`` mask probabilities into full-size boolean image masks, as separable bilinear resizes.

Detectron2's ``paste_masks_in_image`` samples each mask with ``grid_sample`` at every pixel of its box,
one mask at a time on CPU. Bilinear sampling on a regular grid is separable, so each paste is two small
matrix products, ``Wy @ mask @ Wx.T``, with the same sample positions, the same zero padding outside the
mask and the same region (the box widened by one pixel) as Detectron2: results agree up to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["paste_masks"]


def _sample_weights(positions: Tensor, size: int) -> Tensor:
    """``(..., L, size)`` bilinear weights of mask pixels for sample ``positions`` (in mask pixels),
    zero beyond the mask as in ``grid_sample(padding_mode="zeros")``."""
    low = positions.floor()
    frac = positions - low
    # Columns 0 and size + 1 collect the taps that fall outside the mask; they are dropped at the end.
    low_index = (low + 1).clamp(0, size + 1).long()
    high_index = (low + 2).clamp(0, size + 1).long()
    weights = positions.new_zeros((*positions.shape, size + 2))
    weights.scatter_add_(-1, low_index.unsqueeze(-1), (1 - frac).unsqueeze(-1))
    weights.scatter_add_(-1, high_index.unsqueeze(-1), frac.unsqueeze(-1))
    return weights[..., 1 : size + 1]


def _mask_positions(start: Tensor, end: Tensor, first: Tensor, length: int, size: int) -> Tensor:
    """Mask-pixel coordinates of image pixel centres ``first + j + 0.5`` (``j < length``) for boxes
    ``[start, end)``, computed like Detectron2's normalized grid and ``grid_sample``'s unnormalization."""
    centres = first[:, None] + torch.arange(length, dtype=start.dtype, device=start.device) + 0.5
    grid = (centres - start[:, None]) / (end - start)[:, None] * 2 - 1
    return ((grid + 1) * size - 1) / 2


def paste_masks(masks: Tensor, boxes: Tensor, image_shape: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """Boolean ``(N, H, W)`` masks: ``masks`` ``(N, M, M)`` probabilities resized into ``boxes`` ``(N, 4)``
    (x0, y0, x1, y1 in image pixels) and thresholded at ``threshold``."""
    if masks.dim() != 3 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"paste_masks: expected (N, M, M) masks and (N, 4) boxes, got {tuple(masks.shape)} and {tuple(boxes.shape)}")
    height, width = int(image_shape[0]), int(image_shape[1])
    num = masks.shape[0]
    out = torch.zeros((num, height, width), dtype=torch.bool, device=masks.device)
    if num == 0:
        return out
    masks = masks.float()
    boxes = boxes.float()
    mask_h, mask_w = masks.shape[1:]
    # Each mask's region: its box widened by one pixel, clipped to the image (Detectron2's skip_empty).
    x0 = (boxes[:, 0].floor() - 1).clamp(min=0).to(torch.int64)
    y0 = (boxes[:, 1].floor() - 1).clamp(min=0).to(torch.int64)
    x1 = (boxes[:, 2].ceil() + 1).clamp(max=width).to(torch.int64)
    y1 = (boxes[:, 3].ceil() + 1).clamp(max=height).to(torch.int64)
    rows = max(int((y1 - y0).max()), 0)
    cols = max(int((x1 - x0).max()), 0)
    if rows == 0 or cols == 0:
        return out
    wy = _sample_weights(_mask_positions(boxes[:, 1], boxes[:, 3], y0.to(boxes.dtype), rows, mask_h), mask_h)
    wx = _sample_weights(_mask_positions(boxes[:, 0], boxes[:, 2], x0.to(boxes.dtype), cols, mask_w), mask_w)
    finite = torch.isfinite(boxes).all(dim=1).tolist()
    for i, (top, bottom, left, right) in enumerate(zip(y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist())):
        h, w = bottom - top, right - left
        if h <= 0 or w <= 0 or not finite[i]:
            continue
        pasted = wy[i, :h] @ masks[i] @ wx[i, :w].T
        out[i, top:bottom, left:right] = pasted >= threshold
    return out
