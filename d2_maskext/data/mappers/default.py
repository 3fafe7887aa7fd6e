"""The default mapper: Detectron2's ``DatasetMapper`` with identical outputs, made faster and fault tolerant.

Same augmentations, same random draws, same pixels, boxes and masks (polygon and bitmask formats). It is
faster because it copies records shallowly instead of ``deepcopy`` and keeps arrays C-contiguous (see
``arrays.py``). During training an image that cannot be read (missing, corrupt, a decompression bomb, or
of the wrong size) is logged, counted and skipped (``INPUT.MAPPER.ON_BAD_IMAGE "skip"``; Detectron2's
loader then samples another image) or raises (``"raise"``). At inference it always raises: evaluating a
substitute image would silently corrupt the metrics. A ``RAW`` image whose channel count is not the model's
(``len(MODEL.PIXEL_MEAN)``) always raises: it is a configuration error, not a bad file.
"""

from __future__ import annotations

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ...utils.image_io import RAW_FORMAT, ImageReadError, check_channel_count, read_image
from .arrays import ContiguousAugInput, apply_contiguous, decode_rle, image_to_tensor
from .bad_images import BadImageCounter
from .photometric import build_photometric_augmentation
from .registry import MAPPER_REGISTRY

BAD_IMAGE_POLICIES = ("skip", "raise")


def copy_record(record: dict) -> dict:
    """Copy a dataset dict deeply enough that mapping the copy never alters the dataset, without ``deepcopy``.

    Detectron2's annotation transforms assign new values to an annotation's keys and only write in place
    into float arrays they receive as is (polygons, keypoints); lists are converted to new arrays anyway.
    """
    out = dict(record)
    if "annotations" in out:
        out["annotations"] = [_copy_annotation(a) for a in out["annotations"]]
    return out


def _copy_annotation(annotation: dict) -> dict:
    out = dict(annotation)
    segm = out.get("segmentation")
    if isinstance(segm, list):
        out["segmentation"] = [p.copy() if isinstance(p, np.ndarray) else p for p in segm]
    if isinstance(out.get("keypoints"), np.ndarray):
        out["keypoints"] = out["keypoints"].copy()
    return out


@MAPPER_REGISTRY.register()
class MaskExtDatasetMapper(DatasetMapper):
    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        on_bad_image: str = "skip",
        max_consecutive_bad_images: int = 20,
        num_channels: int | None = None,
        **kwargs,
    ):
        """``on_bad_image``: "skip" or "raise" for unreadable training images; ``num_channels``: the channel count
        every ``RAW`` image must have (None: unchecked); other arguments as ``DatasetMapper``."""
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"INPUT.MAPPER.ON_BAD_IMAGE must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        super().__init__(is_train, **kwargs)
        self.on_bad_image = on_bad_image
        self.bad_images = BadImageCounter(max_consecutive_bad_images)
        self.num_channels = num_channels

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        ret = super().from_config(cfg, is_train)
        if is_train:
            ret["augmentations"] = [*ret["augmentations"], *build_photometric_augmentation(cfg)]
        ret["on_bad_image"] = cfg.INPUT.MAPPER.ON_BAD_IMAGE
        ret["max_consecutive_bad_images"] = cfg.INPUT.MAPPER.MAX_CONSECUTIVE_BAD_IMAGES
        ret["num_channels"] = len(cfg.MODEL.PIXEL_MEAN)
        return ret

    def __call__(self, dataset_dict: dict) -> dict | None:
        dataset_dict = copy_record(dataset_dict)
        image = self._read_image(dataset_dict)
        if image is None:
            return None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        else:
            sem_seg_gt = None

        aug_input = ContiguousAugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        dataset_dict["image"] = image_to_tensor(image)
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

    def _read_image(self, dataset_dict: dict) -> np.ndarray | None:
        """The image, or None after counting and logging it when it cannot be used and skipping is allowed."""
        file_name = dataset_dict["file_name"]
        try:
            image = read_image(file_name, self.image_format)
            utils.check_image_size(dataset_dict, image)
        except (ImageReadError, utils.SizeMismatchError) as e:
            if not self.is_train or self.on_bad_image == "raise":
                raise
            self.bad_images.skip(file_name, e)
            return None
        if self.image_format == RAW_FORMAT and self.num_channels is not None:
            check_channel_count(image, self.num_channels, file_name)
        self.bad_images.succeed()
        return image

    def _transform_annotations(self, dataset_dict: dict, transforms: T.TransformList, image_shape: tuple) -> None:
        annos = [
            self._transform_instance(obj, transforms, image_shape, dataset_dict["file_name"])
            for obj in dataset_dict.pop("annotations")
            if obj.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def _transform_instance(self, obj: dict, transforms: T.TransformList, image_shape: tuple, file_name: str) -> dict:
        """Detectron2's ``transform_instance_annotations``, with RLE masks decoded and moved contiguously."""
        if not self.use_instance_mask:
            obj.pop("segmentation", None)
        if not self.use_keypoint:
            obj.pop("keypoints", None)
        rle = obj.pop("segmentation") if isinstance(obj.get("segmentation"), dict) else None
        obj = utils.transform_instance_annotations(
            obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
        )
        if rle is not None:
            mask = apply_contiguous(transforms, decode_rle(rle), segmentation=True)
            if mask.shape[:2] != tuple(image_shape):
                raise ValueError(f"{file_name}: RLE mask of size {rle['size']} does not match the image")
            obj["segmentation"] = mask
        return obj
