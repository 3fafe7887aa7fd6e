"""Large-scale jitter (Ghiasi et al., "Simple Copy-Paste", CVPR 2021): flip, resize by a random scale in
[0.1, 2.0] of a square target, then crop (or pad) to that fixed size.

Masks are rasterized directly in the output frame (polygons are transformed exactly and clipped by
rasterization; RLE masks are resized with nearest neighbour, cropped and zero-padded), and boxes are
recomputed from the masks, so instances cut by the crop get tight boxes. Masks therefore always come out
as ``BitMasks``, whatever ``INPUT.MASK_FORMAT`` says. Inference uses the default test-time resize.
``RAW`` images are padded with ``MODEL.PIXEL_MEAN``, one value per channel (zero after normalisation), since
``INPUT.LSJ.PAD_VALUE`` is in 8-bit units.
"""

from __future__ import annotations

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances, polygons_to_bitmask

from ...utils.image_io import RAW_FORMAT
from .arrays import apply_contiguous, decode_rle
from .default import MaskExtDatasetMapper
from .photometric import build_photometric_augmentation
from .registry import MAPPER_REGISTRY


class ChannelPadTransform(T.PadTransform):
    """``PadTransform`` with one pad value per image channel (``np.pad`` takes one value for all of them)."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        height, width = img.shape[:2]
        out = np.empty((self.y0 + height + self.y1, self.x0 + width + self.x1, *img.shape[2:]), img.dtype)
        out[...] = np.asarray(self.pad_value, dtype=img.dtype)
        out[self.y0 : self.y0 + height, self.x0 : self.x0 + width] = img
        return out


class ChannelPadFixedSizeCrop(T.FixedSizeCrop):
    """``FixedSizeCrop`` whose ``pad_value`` is a sequence, one value per channel."""

    def _get_pad(self, image: np.ndarray) -> T.Transform:
        pad = super()._get_pad(image)
        return ChannelPadTransform(pad.x0, pad.y0, pad.x1, pad.y1, pad.orig_w, pad.orig_h, pad.pad_value, pad.seg_pad_value)


def build_lsj_augmentation(cfg: CfgNode) -> list[T.Augmentation]:
    lsj = cfg.INPUT.LSJ
    size = lsj.IMAGE_SIZE
    augmentations: list[T.Augmentation] = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(
            T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical")
        )
    augmentations.append(T.ResizeScale(lsj.MIN_SCALE, lsj.MAX_SCALE, size, size))
    # Masks must be padded with 0 (FixedSizeCrop's default of 255 would mark the padding as foreground).
    if cfg.INPUT.FORMAT == RAW_FORMAT:
        augmentations.append(ChannelPadFixedSizeCrop((size, size), pad_value=list(cfg.MODEL.PIXEL_MEAN), seg_pad_value=0))
    else:
        augmentations.append(T.FixedSizeCrop((size, size), pad_value=lsj.PAD_VALUE, seg_pad_value=0))
    return augmentations


@MAPPER_REGISTRY.register()
class LSJDatasetMapper(MaskExtDatasetMapper):
    rasterizes_masks = True  # accepts polygon and RLE masks whatever INPUT.MASK_FORMAT is

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        ret = super().from_config(cfg, is_train)
        if is_train:
            if not cfg.MODEL.MASK_ON:
                raise ValueError(f"{cls.__name__} recomputes boxes from masks and needs MODEL.MASK_ON True")
            ret["augmentations"] = [*build_lsj_augmentation(cfg), *build_photometric_augmentation(cfg)]
            ret["recompute_boxes"] = True
        return ret

    def _transform_annotations(self, dataset_dict: dict, transforms: T.TransformList, image_shape: tuple) -> None:
        file_name = dataset_dict["file_name"]
        annos = [obj for obj in dataset_dict.pop("annotations") if obj.get("iscrowd", 0) == 0]
        masks = [self._instance_mask(obj, transforms, image_shape, file_name) for obj in annos]
        tensor = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, *image_shape), dtype=torch.bool)
        bitmasks = BitMasks(tensor)
        instances = Instances(image_shape)
        instances.gt_boxes = bitmasks.get_bounding_boxes()
        instances.gt_classes = torch.tensor([int(obj["category_id"]) for obj in annos], dtype=torch.int64)
        instances.gt_masks = bitmasks
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def _instance_mask(self, obj: dict, transforms: T.TransformList, image_shape: tuple, file_name: str) -> np.ndarray:
        segm = obj.get("segmentation")
        if isinstance(segm, dict):
            return apply_contiguous(transforms, decode_rle(segm), segmentation=True).astype(bool)
        if isinstance(segm, list):
            polygons = [transforms.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2)).reshape(-1) for p in segm]
            return polygons_to_bitmask(polygons, *image_shape)
        raise ValueError(f"{file_name}: {type(self).__name__} needs a mask for every instance, found {type(segm).__name__}")
