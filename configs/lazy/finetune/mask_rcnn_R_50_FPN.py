"""Fine-tune Detectron2's COCO Mask R-CNN R50-FPN 3x (box AP 41.0, mask AP 37.2) on your own classes, with its
own heads (lazy twin of configs/finetune/mask_rcnn_R_50_FPN.yaml). Every COCO weight loads except the
class-dependent layers, which start fresh; the checkpointer logs one report of what was loaded.

Replace the two datasets and the class count with yours (formats: docs/datasets.md).
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from d2_maskext import register_dataset

from ..mask_rcnn_R_50_FPN_1x import dataloader, model, optimizer, train

COCO_3X = "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
MAX_ITER = 4000

# Registering reads nothing: the files are loaded when training or evaluation first needs them.
register_dataset("my_train", "coco", "datasets/my_data/train", "datasets/my_data/train.json")
register_dataset("my_val", "coco", "datasets/my_data/val", "datasets/my_data/val.json")


def fine_tune(model, dataloader, optimizer, train):
    """Apply the fine-tuning data, class count and schedule to a COCO R50-FPN config; return its LR schedule."""
    model.roi_heads.num_classes = 3  # your number of classes (checked against the datasets at start-up)
    dataloader.train.dataset.names = "my_train"
    dataloader.test.dataset.names = "my_val"
    dataloader.train.mapper.instance_mask_format = "bitmask"  # works with polygon and RLE masks alike
    dataloader.train.total_batch_size = 8
    optimizer.lr = 0.01
    train.init_checkpoint = COCO_3X
    train.max_iter = MAX_ITER
    train.checkpointer.period = 1000
    train.eval_period = 1000
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[3000, 3600, MAX_ITER]),
        warmup_length=200 / MAX_ITER,
        warmup_factor=0.001,
    )


lr_multiplier = fine_tune(model, dataloader, optimizer, train)
train.output_dir = "output/finetune_lazy/mask_rcnn_R_50_FPN"
