"""As mask_rcnn_R_50_FPN_1x.py, with the fast settings of ``MaskExtRCNN`` (the lazy twin of
configs/coco/mask_rcnn_R_50_FPN_1x_cpu_fast.yaml): channels-last memory format and bfloat16 for the
network, in training and inference (float32 on CPUs without AVX512-BF16/AMX, with one warning). Boxes,
losses, mask pasting and checkpoints stay float32, so weights move freely between this and the stock model.
"""

from detectron2.config import LazyCall as L

from d2_maskext.modeling import MaskExtRCNN
from d2_maskext.modeling.precision import parse_precision

from .mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model._target_ = MaskExtRCNN
model.channels_last = True  # MODEL.MASKEXT.CHANNELS_LAST
model.precision = L(parse_precision)(name="bfloat16")  # MODEL.MASKEXT.PRECISION

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
