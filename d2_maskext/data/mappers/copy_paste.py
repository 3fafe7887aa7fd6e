"""Simple Copy-Paste (Ghiasi et al., CVPR 2021; +1.2 mask AP at long schedules): paste a random subset of
the instances of another training image onto this one.

Both images go through large-scale jitter independently (so they share the fixed output size); pasted
pixels replace the target's, the target's masks lose the pasted area, fully occluded target instances are
dropped and every box is recomputed from its mask.
"""

from __future__ import annotations

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList
from detectron2.structures import BitMasks, Instances

from .lsj import LSJDatasetMapper
from .registry import MAPPER_REGISTRY


def paste_instances(target: dict, source: dict, subset: np.ndarray | None = None) -> dict:
    """Mapped ``target`` with the ``subset`` (default: random, non-empty) of ``source``'s instances pasted on top."""
    if target["image"].shape != source["image"].shape:
        raise ValueError(f"copy-paste needs equal image sizes, got {tuple(target['image'].shape)} and {tuple(source['image'].shape)}")
    pool = source["instances"]
    if subset is None:
        subset = np.random.choice(len(pool), np.random.randint(1, len(pool) + 1), replace=False)
    pasted = pool[torch.as_tensor(np.sort(subset), dtype=torch.long)]
    alpha = pasted.gt_masks.tensor.any(dim=0)
    kept = target["instances"]
    visible = kept.gt_masks.tensor & ~alpha
    keep = visible.flatten(1).any(dim=1)  # fully occluded instances disappear
    masks = BitMasks(torch.cat([visible[keep], pasted.gt_masks.tensor]))
    instances = Instances(
        kept.image_size,
        gt_boxes=masks.get_bounding_boxes(),
        gt_classes=torch.cat([kept.gt_classes[keep], pasted.gt_classes]),
        gt_masks=masks,
    )
    return {**target, "image": torch.where(alpha, source["image"], target["image"]), "instances": instances}


@MAPPER_REGISTRY.register()
class CopyPasteDatasetMapper(LSJDatasetMapper):
    @configurable
    def __init__(self, is_train: bool, *, paste_source: DatasetFromList | None = None, paste_prob: float = 1.0, **kwargs):
        """``paste_source``: training dicts to paste from; ``paste_prob``: chance an image receives a paste."""
        super().__init__(is_train, **kwargs)
        self.paste_source = paste_source
        self.paste_prob = paste_prob

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        ret = super().from_config(cfg, is_train)
        if is_train:
            dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=True)
            # Serialized like Detectron2's training set, so data-loader workers share it without copying.
            ret["paste_source"] = DatasetFromList(dicts, copy=False, serialize=True)
            ret["paste_prob"] = cfg.INPUT.COPY_PASTE.PROB
        return ret

    def __call__(self, dataset_dict: dict) -> dict | None:
        target = super().__call__(dataset_dict)
        if target is None or not self.is_train or self.paste_source is None or np.random.rand() >= self.paste_prob:
            return target
        source = super().__call__(self.paste_source[np.random.randint(len(self.paste_source))])
        if source is None or len(source["instances"]) == 0:  # an unreadable source was counted and logged
            return target
        return paste_instances(target, source)
