"""The demo (lazy twin of configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml): a ResNet-18 Mask R-CNN with
GroupNorm everywhere, trained from scratch on CPU on the built-in synthetic dataset, with the fused pooler,
bfloat16 autocast in the training loop (float32 on CPUs without AVX512-BF16/AMX) and float32 evaluation.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/synthetic/mask_rcnn_R18_FPN_GN_demo.py
"""

from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import ResNet
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from d2_maskext.data.mappers import MaskExtDatasetMapper
from d2_maskext.modeling import MaskExtRCNN

from ..common.evaluation import evaluator as _evaluator
from ..mask_rcnn_R_50_FPN_1x import model, optimizer, train

WIDTH = 64  # MODEL.FPN.OUT_CHANNELS: every head reads FPN features of this width

_backbone = model.backbone
_backbone.bottom_up.stem.norm = "GN"
_backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="GN")
_backbone.bottom_up.freeze_at = 0  # from scratch: nothing to keep frozen
_backbone.norm = "GN"
_backbone.out_channels = WIDTH

_rpn = model.proposal_generator
_rpn.head.in_channels = WIDTH
_rpn.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
_rpn.pre_nms_topk = (1000, 1000)
_rpn.post_nms_topk = (500, 300)

_roi_heads = model.roi_heads
_roi_heads.num_classes = 5
_roi_heads.batch_size_per_image = 64
_roi_heads.box_head.input_shape = ShapeSpec(channels=WIDTH, height=7, width=7)
_roi_heads.box_head.fc_dims = [256, 256]
_roi_heads.box_head.conv_norm = "GN"
_roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
_roi_heads.box_predictor.test_topk_per_image = 50  # TEST.DETECTIONS_PER_IMAGE
_roi_heads.mask_head.input_shape = ShapeSpec(channels=WIDTH, height=14, width=14)
_roi_heads.mask_head.conv_dims = [128, 128, 128, 128, 128]
_roi_heads.mask_head.conv_norm = "GN"
model.pixel_std = [57.375, 57.120, 58.395]  # trained from scratch: ImageNet's std, not absorbed in conv1
model._target_ = MaskExtRCNN

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="maskext_synth_train"),
    mapper=L(MaskExtDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(256,), max_size=512, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",  # the synthetic masks are RLE
    ),
    total_batch_size=4,
    num_workers=1,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="maskext_synth_val", filter_empty=False),
    mapper=L(MaskExtDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=256, max_size=512)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=1,
)
dataloader.evaluator = _evaluator

MAX_ITER = 800
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[600, 733, MAX_ITER]),
    warmup_length=100 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=0.001,
)
optimizer.lr = 0.02

train.init_checkpoint = ""
train.device = "cpu"
train.max_iter = MAX_ITER
train.checkpointer.period = 200
train.clip_gradients = dict(enabled=True, clip_type="norm", clip_value=5.0, norm_type=2.0)
train.eval_period = 0  # evaluate once, at the end
train.seed = 1
train.amp.enabled = True
train.output_dir = "output/demo_lazy"
