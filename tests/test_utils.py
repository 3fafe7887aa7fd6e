"""Shared helpers: mask -> RLE, atomic file writes, and the one image reader used by prediction and the
report's panels (a decompression bomb is skipped there, not a crash)."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from d2_maskext.utils import atomic_open, mask_to_rle
from d2_maskext.visualization import read_image_or_blank


def test_mask_to_rle_is_exact_and_json_ready():
    mask = np.zeros((7, 9), np.uint8)
    mask[1:6, 2:8] = 255
    mask[3, 4] = 0  # a hole
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [7, 9]
    decoded = mask_util.decode(json.loads(json.dumps(rle)))
    assert np.array_equal(decoded, (mask != 0).astype(np.uint8))


def test_mask_to_rle_rejects_a_stack():
    with pytest.raises(ValueError, match=r"H x W mask, got shape \(2, 3, 4\)"):
        mask_to_rle(np.zeros((2, 3, 4), bool))


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_open_replaces_the_file_and_leaves_no_temp_file(tmp_path, durable):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with atomic_open(target, "wb", durable=durable) as f:
        f.write(b"new")
        assert target.read_bytes() == b"old"  # readers see the old content until the rename
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_report_panel_draws_a_blank_canvas_for_a_decompression_bomb(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.zeros((200, 200, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    image, found = read_image_or_blank(path, 20, 30)
    assert not found and image.shape == (20, 30, 3)
