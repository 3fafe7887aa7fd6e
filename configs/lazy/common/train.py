"""Detectron2's ``common/train.py`` with the keys the plugin's lazy training adds
(d2_maskext/engine/lazy_training.py): the checkpoint pickle policy, gradient clipping, the HTML report and the
loop around training."""

from detectron2.model_zoo import get_config

train = get_config("common/train.py").train
# Weights-only checkpoint loading, as CHECKPOINT.ALLOW_UNSAFE_PICKLE: True unpickles arbitrary objects.
train.checkpointer.allow_unsafe_pickle = False
# As SOLVER.CLIP_GRADIENTS.
train.clip_gradients = dict(enabled=False, clip_type="norm", clip_value=1.0, norm_type=2.0)
# The single-file report of each evaluation (output_dir/report/report.html), as TEST.REPORT.
train.report = dict(enabled=True, score_threshold=0.5, iou_threshold=0.5, num_worst_images=8)
# The loop around training (docs/training.md), as TEST.VAL_LOSS_*, SOLVER.BEST_CHECKPOINT.*,
# SOLVER.EARLY_STOPPING.* and TEST.VIS_*: validation loss every `period` iterations (0 = off), the best
# checkpoint by `metric` ("" = off), early stopping after `patience` evaluations without improvement (0 = off),
# `count` test images with predictions in TensorBoard at each evaluation (0 = off).
train.val_loss = dict(period=0, images=50)
train.best_checkpoint = dict(metric="", mode="max")
train.early_stopping = dict(patience=0, min_delta=0.0)
train.vis_images = dict(count=4, score_threshold=0.5)
