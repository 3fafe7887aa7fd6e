"""Training and evaluation from LazyConfig files, with the same plugin parts as the YAML ``Trainer``.

Detectron2's ``tools/lazyconfig_train_net.py`` builds everything with ``instantiate`` and runs a
``SimpleTrainer`` with a handful of hooks. This module does the same, with what the plugin adds to
training: checkpoints saved atomically and loaded weights-only (``SafeCheckpointer``), bfloat16 autocast on
CPU for ``train.amp.enabled`` (``CPUAutocastTrainer``), optional gradient clipping, the optimizer-step
counter, class-count checks against the datasets, the plugin's COCO evaluator and the HTML report, and the
loop around training of :mod:`.training_loop` (validation loss, best checkpoint, early stopping, evaluation
images).

Keys a plugin lazy config adds to Detectron2's ``common/train.py``::

    train.checkpointer.allow_unsafe_pickle = False     # CHECKPOINT.ALLOW_UNSAFE_PICKLE
    train.clip_gradients = dict(enabled=False, clip_type="norm", clip_value=1.0, norm_type=2.0)
    train.report = dict(enabled=True, score_threshold=0.5, iou_threshold=0.5, num_worst_images=8)
    # The loop around training (docs/training.md), as TEST.VAL_LOSS_*, SOLVER.BEST_CHECKPOINT.*,
    # SOLVER.EARLY_STOPPING.* and TEST.VIS_*, with the same defaults when absent:
    train.val_loss = dict(period=0, images=50)
    train.best_checkpoint = dict(metric="", mode="max")
    train.early_stopping = dict(patience=0, min_delta=0.0)
    train.vis_images = dict(count=4, score_threshold=0.5)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode, instantiate
from detectron2.data import MetadataCatalog
from detectron2.engine import create_ddp_model, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..checkpoint import SafeCheckpointer
from ..config import lazy_dataset_names
from ..evaluation.coco_metrics import load_results_json, result_tasks
from ..evaluation.report import ReportOptions, build_report, dataset_ground_truth
from ..modeling.precision import amp_enabled
from .best_checkpoint import TrainingStopped
from .hooks import OptimizerStepCounter
from .trainer import ddp_device_ids, training_loop_class
from .training_loop import around_eval_hook, lazy_loop_settings

logger = logging.getLogger(__name__)

RESULTS_FILE = "coco_instances_results.json"  # written by the plugin's COCO evaluator into its output_dir


def _select(cfg: DictConfig, key: str, default: Any) -> Any:
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def build_lazy_model(cfg: DictConfig) -> nn.Module:
    """``cfg.model`` instantiated on ``train.device``."""
    return instantiate(cfg.model).to(torch.device(_select(cfg, "train.device", "cpu")))


def check_dataset_classes(cfg: DictConfig) -> None:
    """The model's class count must equal each dataset's number of classes (known once loaded)."""
    num_classes = OmegaConf.select(cfg, "model.roi_heads.num_classes")
    names = [*lazy_dataset_names(cfg, "train"), *lazy_dataset_names(cfg, "test")]
    for name in dict.fromkeys(names):
        classes = MetadataCatalog.get(name).get("thing_classes")
        if num_classes is not None and classes is not None and len(classes) != num_classes:
            raise ValueError(
                f"model.roi_heads.num_classes is {num_classes} but dataset '{name}' has {len(classes)} classes "
                f"{list(classes)[:10]}; set model.roi_heads.num_classes={len(classes)}"
            )


def lazy_checkpointer(cfg: DictConfig, model: nn.Module, **checkpointables: Any) -> SafeCheckpointer:
    return SafeCheckpointer(
        model,
        _select(cfg, "train.output_dir", "./output"),
        allow_unsafe_pickle=bool(_select(cfg, "train.checkpointer.allow_unsafe_pickle", False)),
        **checkpointables,
    )


def _with_gradient_clipping(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    clip = _select(cfg, "train.clip_gradients", {})
    if not clip or not clip.get("enabled", False):
        return optimizer
    solver_keys = CfgNode(
        {
            "SOLVER": {
                "CLIP_GRADIENTS": {
                    "ENABLED": True,
                    "CLIP_TYPE": clip.get("clip_type", "norm"),
                    "CLIP_VALUE": float(clip.get("clip_value", 1.0)),
                    "NORM_TYPE": float(clip.get("norm_type", 2.0)),
                }
            }
        }
    )
    return maybe_add_gradient_clipping(solver_keys, optimizer)


def lazy_validation_loss_mapper(cfg: DictConfig) -> Any:
    """``dataloader.test.mapper`` in training mode (annotations kept, with the training mapper's instance
    masks): the test-time resize and no random augmentation, so the validation images are the same each time."""
    mapper = OmegaConf.to_container(cfg.dataloader.test.mapper, resolve=True)
    train_mapper = "dataloader.train.mapper"
    mapper.update(
        is_train=True,
        use_instance_mask=bool(_select(cfg, f"{train_mapper}.use_instance_mask", False)),
        instance_mask_format=_select(cfg, f"{train_mapper}.instance_mask_format", "polygon"),
    )
    return instantiate(mapper)


def lazy_test(cfg: DictConfig, model: nn.Module) -> dict:
    """Evaluate on ``dataloader.test`` with ``dataloader.evaluator``; write the report if ``train.report``
    asks for it. Returns the evaluator's results (empty without an evaluator)."""
    if "evaluator" not in cfg.dataloader:
        return {}
    evaluator = instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process():
        print_csv_format(results)
        _write_report(cfg)
    return results


def _write_report(cfg: DictConfig) -> None:
    report = dict(_select(cfg, "train.report", {}))
    if not report.pop("enabled", False):
        return
    dataset_name = lazy_dataset_names(cfg, "test")[0]
    results_file = Path(str(cfg.dataloader.evaluator.output_dir)) / RESULTS_FILE
    output_dir = Path(_select(cfg, "train.output_dir", "./output")) / "report"
    output_dir.mkdir(parents=True, exist_ok=True)
    options = ReportOptions(
        max_dets_per_image=int(_select(cfg, "dataloader.evaluator.max_dets_per_image", 100)), **report
    )
    coco_gt, image_paths = dataset_ground_truth(dataset_name, output_dir)
    results = load_results_json(results_file, coco_gt)
    path = build_report(coco_gt, results, output_dir, image_paths, options, dataset_name, result_tasks(results))
    logger.info("report: %s", path)


def lazy_train(cfg: DictConfig, resume: bool) -> None:
    """Train ``cfg.model`` on ``dataloader.train`` for ``train.max_iter`` iterations (or until early
    stopping ends it), evaluating every ``train.eval_period`` iterations and at the end."""
    settings = lazy_loop_settings(cfg)  # bad settings stop here, before anything is built
    model = build_lazy_model(cfg)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = _with_gradient_clipping(cfg, instantiate(cfg.optimizer))
    train_loader = instantiate(cfg.dataloader.train)
    check_dataset_classes(cfg)
    model = create_ddp_model(model, device_ids=ddp_device_ids(model), **_select(cfg, "train.ddp", {}))
    trainer = training_loop_class(amp_enabled(cfg), model)(model, train_loader, optimizer)
    checkpointer = lazy_checkpointer(cfg, model, trainer=trainer)
    output_dir = _select(cfg, "train.output_dir", "./output")
    max_iter = int(cfg.train.max_iter)
    period = _select(cfg, "train.checkpointer.period", 5000)
    stock_hooks = [
        OptimizerStepCounter(),
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(
            checkpointer, period, max_iter=max_iter, max_to_keep=_select(cfg, "train.checkpointer.max_to_keep", None)
        )
        if comm.is_main_process()
        else None,
        hooks.EvalHook(_select(cfg, "train.eval_period", 0), lambda: lazy_test(cfg, model)),
        hooks.PeriodicWriter(default_writers(output_dir, max_iter), period=_select(cfg, "train.log_period", 20))
        if comm.is_main_process()
        else None,
    ]
    trainer.register_hooks(
        around_eval_hook(
            stock_hooks,
            settings,
            model,
            checkpointer,
            loss_mapper=lambda: lazy_validation_loss_mapper(cfg),
            test_mapper=lambda: instantiate(cfg.dataloader.test.mapper),
        )
    )
    checkpointer.resume_or_load(_select(cfg, "train.init_checkpoint", ""), resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    try:
        trainer.train(start_iter, max_iter)
    except TrainingStopped as stop:
        logger.info("%s", stop)


def lazy_evaluate(cfg: DictConfig, resume: bool) -> dict:
    """``--eval-only``: load ``train.init_checkpoint`` (or, with ``--resume``, the last checkpoint) and test."""
    model = build_lazy_model(cfg)
    lazy_checkpointer(cfg, model).resume_or_load(_select(cfg, "train.init_checkpoint", ""), resume=resume)
    return lazy_test(cfg, model)


__all__ = [
    "build_lazy_model",
    "check_dataset_classes",
    "lazy_checkpointer",
    "lazy_evaluate",
    "lazy_test",
    "lazy_train",
    "lazy_validation_loss_mapper",
]
