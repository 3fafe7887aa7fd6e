"""The loop around training: validation loss, best checkpoint, early stopping and evaluation images, their
settings read from either config style and checked before anything is built, and their hooks placed around
Detectron2's ``EvalHook`` for both trainers.

The checks run at start-up so that a misspelt metric or a patience that can never count fails in seconds,
not after hours of training at the first evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from detectron2.checkpoint import Checkpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..config import lazy_dataset_names
from ..evaluation.coco_metrics import AP_METRICS
from .best_checkpoint import BestCheckpointer
from .validation_loss import ValidationLoss, evenly_spaced, validation_records

Mapper = Callable[[dict], "dict | None"]

VALIDATION_PREFIX = "validation/"
MODES = ("max", "min")

YAML_KEYS = {
    "val_loss_period": "TEST.VAL_LOSS_PERIOD",
    "val_loss_images": "TEST.VAL_LOSS_IMAGES",
    "metric": "SOLVER.BEST_CHECKPOINT.METRIC",
    "mode": "SOLVER.BEST_CHECKPOINT.MODE",
    "patience": "SOLVER.EARLY_STOPPING.PATIENCE",
    "min_delta": "SOLVER.EARLY_STOPPING.MIN_DELTA",
    "eval_period": "TEST.EVAL_PERIOD",
    "vis_images": "TEST.VIS_IMAGES",
    "vis_score_threshold": "TEST.VIS_SCORE_THRESHOLD",
    "test_datasets": "DATASETS.TEST",
}
LAZY_KEYS = {
    "val_loss_period": "train.val_loss.period",
    "val_loss_images": "train.val_loss.images",
    "metric": "train.best_checkpoint.metric",
    "mode": "train.best_checkpoint.mode",
    "patience": "train.early_stopping.patience",
    "min_delta": "train.early_stopping.min_delta",
    "eval_period": "train.eval_period",
    "vis_images": "train.vis_images.count",
    "vis_score_threshold": "train.vis_images.score_threshold",
    "test_datasets": "dataloader.test.dataset.names",
}


@dataclass(frozen=True)
class LoopSettings:
    """What the loop hooks do; ``keys`` names each setting's config key for error messages."""

    val_loss_period: int
    val_loss_images: int
    metric: str
    mode: str
    patience: int
    min_delta: float
    eval_period: int
    vis_images: int
    vis_score_threshold: float
    test_datasets: tuple[str, ...]
    eval_tasks: tuple[str, ...]
    # What precedes <task>/<metric> in the evaluator's results: "" for one result set, "<dataset>/" for each
    # of several test datasets (Detectron2 nests them by name); none without an evaluator.
    result_prefixes: tuple[str, ...]
    keys: dict[str, str]

    @property
    def metric_period(self) -> int:
        """Iterations between two values of the metric: validation losses come with their own period."""
        return self.val_loss_period if self.metric.startswith(VALIDATION_PREFIX) else self.eval_period

    def check(self) -> None:
        """Raise ValueError naming the key and its valid values for settings that cannot work."""
        k = self.keys
        for name in ("val_loss_period", "val_loss_images", "patience", "eval_period", "vis_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{k[name]} must be >= 0, got {getattr(self, name)}")
        if self.min_delta < 0:
            raise ValueError(f"{k['min_delta']} must be >= 0, got {self.min_delta}")
        if self.mode not in MODES:
            raise ValueError(f"{k['mode']} must be one of {MODES}, got {self.mode!r}")
        if self.val_loss_period and (not self.test_datasets or self.val_loss_images == 0):
            raise ValueError(
                f"{k['val_loss_period']} is {self.val_loss_period} but there are no validation images: "
                f"set {k['test_datasets']} and {k['val_loss_images']} > 0, or {k['val_loss_period']} 0"
            )
        if self.metric:
            self._check_metric()
        if self.patience:
            if not self.metric:
                raise ValueError(
                    f"{k['patience']} is {self.patience} but {k['metric']} is empty: early stopping "
                    "watches the best-checkpoint metric; set one (e.g. segm/AP) or patience 0"
                )
            if self.metric_period == 0:
                period_key = k[
                    "val_loss_period" if self.metric.startswith(VALIDATION_PREFIX) else "eval_period"
                ]
                raise ValueError(
                    f"{k['patience']} is {self.patience} but {period_key} is 0: there are no evaluations "
                    f"during training to count; set {period_key} > 0 or {k['patience']} 0"
                )

    def _check_metric(self) -> None:
        k = self.keys
        if self.metric.startswith(VALIDATION_PREFIX):
            name = self.metric[len(VALIDATION_PREFIX) :]
            if not self.val_loss_period:
                raise ValueError(
                    f"{k['metric']} {self.metric!r} needs validation losses: set {k['val_loss_period']} > 0"
                )
            if name != "total_loss" and not name.startswith("loss_"):
                raise ValueError(
                    f"{k['metric']} {self.metric!r} is not a validation loss: use validation/total_loss or "
                    "validation/<loss name> (e.g. validation/loss_mask)"
                )
            return
        if not self.result_prefixes:
            raise ValueError(
                f"{k['metric']} {self.metric!r} needs an evaluation: {k['test_datasets']} is empty"
            )
        if self.metric not in self.evaluator_metrics() and not self._is_class_ap(self.metric):
            examples = ", ".join(self.evaluator_metrics()[:8])
            raise ValueError(
                f"{k['metric']} {self.metric!r} is not produced by the evaluator; valid: "
                f"{'<dataset>/' if self.result_prefixes != ('',) else ''}<task>/<metric> with task in "
                f"{self.eval_tasks} and metric in {AP_METRICS} or AP-<class> (e.g. {examples}), or "
                f"validation/total_loss, validation/loss_* with {k['val_loss_period']} > 0"
            )

    def evaluator_metrics(self) -> list[str]:
        """Every summary metric the evaluator puts into the storage."""
        return [
            f"{p}{task}/{m}" for p in self.result_prefixes for task in self.eval_tasks for m in AP_METRICS
        ]

    def _is_class_ap(self, metric: str) -> bool:
        return any(
            metric.startswith(f"{p}{task}/AP-") for p in self.result_prefixes for task in self.eval_tasks
        )


def _eval_tasks(mask_on: bool) -> tuple[str, ...]:
    """The tasks of the plugin's COCO evaluator: Boundary AP comes with every mask evaluation."""
    return ("bbox", "segm", "boundary") if mask_on else ("bbox",)


def _yaml_result_prefixes(test_datasets: tuple[str, ...]) -> tuple[str, ...]:
    """``DefaultTrainer.test`` nests the results of several datasets under their names."""
    if len(test_datasets) > 1:
        return tuple(f"{d}/" for d in test_datasets)
    return ("",) if test_datasets else ()


def yaml_loop_settings(cfg: CfgNode) -> LoopSettings:
    """The settings of a YAML config (keys from ``config._add_training_loop_config``), checked."""
    settings = LoopSettings(
        val_loss_period=cfg.TEST.VAL_LOSS_PERIOD,
        val_loss_images=cfg.TEST.VAL_LOSS_IMAGES,
        metric=cfg.SOLVER.BEST_CHECKPOINT.METRIC,
        mode=cfg.SOLVER.BEST_CHECKPOINT.MODE,
        patience=cfg.SOLVER.EARLY_STOPPING.PATIENCE,
        min_delta=float(cfg.SOLVER.EARLY_STOPPING.MIN_DELTA),
        eval_period=cfg.TEST.EVAL_PERIOD,
        vis_images=cfg.TEST.VIS_IMAGES,
        vis_score_threshold=float(cfg.TEST.VIS_SCORE_THRESHOLD),
        test_datasets=tuple(cfg.DATASETS.TEST),
        eval_tasks=_eval_tasks(cfg.MODEL.MASK_ON),
        result_prefixes=_yaml_result_prefixes(tuple(cfg.DATASETS.TEST)),
        keys=YAML_KEYS,
    )
    settings.check()
    return settings


def _lazy_tasks(cfg: DictConfig) -> tuple[str, ...]:
    tasks: Sequence[str] | None = OmegaConf.select(cfg, "dataloader.evaluator.tasks")
    if tasks is None:
        return _eval_tasks(OmegaConf.select(cfg, "model.roi_heads.mask_head") is not None)
    return _eval_tasks("segm" in tasks) if "segm" in tasks else tuple(tasks)


def lazy_loop_settings(cfg: DictConfig) -> LoopSettings:
    """The settings of a lazy config's ``train.val_loss``, ``train.best_checkpoint``,
    ``train.early_stopping`` and ``train.vis_images`` (absent: the YAML keys' defaults), checked."""

    def select(key: str, default: object) -> object:
        value = OmegaConf.select(cfg, key, default=default)
        return default if value is None else value

    has_evaluator = OmegaConf.select(cfg, "dataloader.evaluator") is not None
    settings = LoopSettings(
        val_loss_period=int(select("train.val_loss.period", 0)),
        val_loss_images=int(select("train.val_loss.images", 50)),
        metric=str(select("train.best_checkpoint.metric", "")),
        mode=str(select("train.best_checkpoint.mode", "max")),
        patience=int(select("train.early_stopping.patience", 0)),
        min_delta=float(select("train.early_stopping.min_delta", 0.0)),
        eval_period=int(select("train.eval_period", 0)),
        vis_images=int(select("train.vis_images.count", 4)),
        vis_score_threshold=float(select("train.vis_images.score_threshold", 0.5)),
        test_datasets=tuple(lazy_dataset_names(cfg, "test")),
        eval_tasks=_lazy_tasks(cfg),
        result_prefixes=("",) if has_evaluator and lazy_dataset_names(cfg, "test") else (),
        keys=LAZY_KEYS,
    )
    settings.check()
    return settings


def around_eval_hook(
    stock: Sequence[HookBase | None],
    settings: LoopSettings,
    model: nn.Module,
    checkpointer: Checkpointer,
    loss_mapper: Callable[[], Mapper],
    test_mapper: Callable[[], Mapper],
) -> list[HookBase | None]:
    """``stock`` hooks with the loop's hooks around its ``EvalHook``: the validation loss before it, the
    evaluation images and the best checkpoint after it (they read its results); all of them before the
    writers. ``loss_mapper`` builds the mapper of the validation loss (annotations kept, test-time resize),
    ``test_mapper`` the test loader's."""
    before: list[HookBase] = []
    after: list[HookBase] = []
    if settings.val_loss_period:
        records = validation_records(settings.test_datasets, settings.val_loss_images)
        before.append(ValidationLoss(settings.val_loss_period, model, records, loss_mapper()))
    if settings.vis_images and settings.test_datasets and comm.is_main_process():
        from .eval_images import EvalImages  # loads matplotlib: only for runs that draw

        name = settings.test_datasets[0]
        after.append(
            EvalImages(
                settings.eval_period,
                model,
                evenly_spaced(DatasetCatalog.get(name), settings.vis_images),
                test_mapper(),
                MetadataCatalog.get(name),
                settings.vis_score_threshold,
            )
        )
    if settings.metric:
        after.append(
            BestCheckpointer(
                settings.metric_period,
                checkpointer,
                settings.metric,
                settings.mode,
                patience=settings.patience,
                min_delta=settings.min_delta,
            )
        )
    at = next(i for i, h in enumerate(stock) if isinstance(h, hooks.EvalHook))
    return [*stock[:at], *before, stock[at], *after, *stock[at + 1 :]]
