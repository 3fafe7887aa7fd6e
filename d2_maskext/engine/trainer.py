"""``DefaultTrainer`` that builds the dataset mapper and evaluator chosen by config, trains on CPU with
several processes, and checkpoints safely."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.data.detection_utils import build_augmentation
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    HookBase,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
)
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn

from ..checkpoint import SafeCheckpointer
from ..data.mappers import MaskExtDatasetMapper, build_mapper
from ..evaluation import build_evaluator
from ..modeling.meta_arch import MaskExtRCNN
from ..modeling.precision import ComputeSettings, amp_autocast_dtype, amp_enabled, training_dtype
from .best_checkpoint import TrainingStopped
from .cpu_amp import CPUAutocastTrainer
from .hooks import OptimizerStepCounter
from .training_loop import around_eval_hook, yaml_loop_settings

logger = logging.getLogger(__name__)


def _is_cuda_model(model: nn.Module) -> bool:
    return next(model.parameters()).is_cuda


def ddp_device_ids(model: nn.Module) -> list[int] | None:
    """torch's DDP wants ``device_ids`` for a CUDA model and refuses them for a CPU one."""
    return [comm.get_local_rank()] if _is_cuda_model(model) else None


def training_loop_class(amp: bool, model: nn.Module) -> type[SimpleTrainer]:
    """Detectron2's loops, plus bfloat16 autocast when AMP (:func:`amp_enabled`) is asked for on a CPU model
    whose CPU runs bfloat16 natively (:func:`amp_autocast_dtype`; float32 elsewhere, with one warning).

    ``MaskExtRCNN`` applies its own precision inside the model; :func:`training_dtype` says what runs and
    refuses float16 without the gradient scaler of Detectron2's ``AMPTrainer``.
    """
    network = getattr(model, "module", model)  # unwrapped from DistributedDataParallel
    settings = network.compute_settings if isinstance(network, MaskExtRCNN) else ComputeSettings()
    training_dtype(settings, amp, "cuda" if _is_cuda_model(model) else "cpu")
    if _is_cuda_model(model):
        return AMPTrainer if amp else SimpleTrainer
    return CPUAutocastTrainer if amp and amp_autocast_dtype("cpu") is not None else SimpleTrainer


class Trainer(DefaultTrainer):
    """Detectron2's trainer with plugin mappers, evaluators and checkpointer.

    Differences from ``DefaultTrainer``: multi-process training works on CPU (gloo), ``SOLVER.AMP.ENABLED``
    works on CPU (bfloat16 autocast, :class:`CPUAutocastTrainer`), checkpoints are
    written atomically and loaded weights-only (:class:`SafeCheckpointer`), optimizer steps are counted
    across resumes (:class:`OptimizerStepCounter`), a NaN/inf loss error says how to recover, and the loop
    around training of :mod:`.training_loop` (validation loss, best checkpoint, early stopping, evaluation
    images) runs when its keys select it.
    """

    def __init__(self, cfg: CfgNode) -> None:
        """``DefaultTrainer``'s set-up from its builders, with the two steps it builds inline and offers no
        builder for: the training loop (:meth:`build_training_loop`) and the checkpointer
        (:meth:`build_checkpointer`).

        Detectron2's ``create_ddp_model`` always passes ``device_ids=[local_rank]``, which torch rejects for
        CPU models, so stock ``DefaultTrainer`` with ``--num-gpus 2`` fails on CPU.
        """
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # setup_logger not called for d2
            setup_logger()
        if not logging.getLogger("d2_maskext").handlers:  # the plugin's messages (e.g. why training stopped)
            setup_logger(cfg.OUTPUT_DIR, comm.get_rank(), name="d2_maskext", enable_propagation=True)
        self.loop_settings = yaml_loop_settings(cfg)  # bad settings stop here, before anything is built
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        self._trainer = self.build_training_loop(cfg, model, self.build_train_loader(cfg), optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, self._trainer.model, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_training_loop(
        cls, cfg: CfgNode, model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer
    ) -> SimpleTrainer:
        """The loop of :func:`training_loop_class` around ``model``, wrapped for distributed training on CPU
        and GPU alike."""
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=ddp_device_ids(model))
        return training_loop_class(amp_enabled(cfg), model)(model, data_loader, optimizer)

    @classmethod
    def build_checkpointer(cls, cfg: CfgNode, model: nn.Module, **checkpointables: Any) -> SafeCheckpointer:
        """Checkpoints in ``cfg.OUTPUT_DIR``, written atomically and loaded weights-only unless
        ``CHECKPOINT.ALLOW_UNSAFE_PICKLE``; also what ``--eval-only`` loads the weights with."""
        return SafeCheckpointer.from_config(cfg, model, **checkpointables)

    def build_hooks(self) -> list[HookBase | None]:
        return around_eval_hook(
            [OptimizerStepCounter(), *super().build_hooks()],
            self.loop_settings,
            self.model,
            self.checkpointer,
            loss_mapper=lambda: self.build_validation_loss_mapper(self.cfg),
            test_mapper=lambda: build_mapper(self.cfg, is_train=False),
        )

    @classmethod
    def build_validation_loss_mapper(cls, cfg: CfgNode) -> MaskExtDatasetMapper:
        """Training-mode mapping (annotations kept, unreadable images skipped) with the test-time resize and
        no random augmentation, so the validation images are the same each time."""
        return MaskExtDatasetMapper(cfg, is_train=True, augmentations=build_augmentation(cfg, is_train=False))

    def train(self) -> Any:
        """``DefaultTrainer.train``; a run ended by early stopping returns its last evaluation's results."""
        try:
            return super().train()
        except TrainingStopped as stop:
            logger.info("%s", stop)
            return getattr(self, "_last_eval_results", None)

    def run_step(self) -> None:
        try:
            super().run_step()
        except FloatingPointError as e:
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else "none yet"
            raise FloatingPointError(
                f"{e}\nTraining stopped before this iteration's optimizer step. Last checkpoint: {last}. "
                "Lower SOLVER.BASE_LR, raise SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS, "
                "then restart with --resume."
            ) from e

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        DatasetCatalog.get(dataset_name)  # generated/validated datasets exist before the evaluator reads them
        return build_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))
