"""The best checkpoint (``model_best.pth`` + ``best_metric.json``) and early stopping on the same metric.

Built on Detectron2's ``BestCheckpointer``, which compares the latest value of a metric in the event storage
with the best so far after each evaluation and saves ``model_best.pth``. Added here:

* ``best_metric.json`` (metric, mode, value, iteration) next to it, read back by a resumed run, so the best
  value is not forgotten and a worse model cannot overwrite a better one after ``--resume``;
* several processes: only rank 0 holds the evaluator's results, so its value is shared with every rank and
  all of them take the same decision;
* early stopping: after ``patience`` evaluations in a row without an improvement by more than ``min_delta``,
  a checkpoint of the current state is written (``model_final.pth``, so ``last_checkpoint`` names where the
  run stopped), the best weights are loaded and training ends; Detectron2's ``EvalHook`` then runs the final
  evaluation on them. The count of evaluations without improvement is stored in every checkpoint, so
  ``--resume`` of a run that stopped does not train on (unless the patience is raised).
"""

from __future__ import annotations

import json
import logging
import math
import os

from detectron2.checkpoint import Checkpointer
from detectron2.engine import hooks
from detectron2.utils import comm

from ..utils import atomic_open

logger = logging.getLogger(__name__)

BEST_METRIC_FILE = "best_metric.json"
BEST_PREFIX = "model_best"
STOP_CHECKPOINT = "model_final"


class TrainingStopped(BaseException):
    """Ends Detectron2's training loop early. Not an ``Exception``: the loop would log it as a failure; its
    hooks' ``after_train`` still runs (and with it the final evaluation)."""


class BestCheckpointer(hooks.BestCheckpointer):
    """``model_best.pth`` by ``metric`` after each evaluation (every ``period`` iterations and at the end), and
    early stopping with ``patience`` > 0. Must run after the hook that produces the metric, in every process."""

    def __init__(
        self,
        period: int,
        checkpointer: Checkpointer,
        metric: str,
        mode: str,
        *,
        patience: int = 0,
        min_delta: float = 0.0,
    ) -> None:
        super().__init__(period, checkpointer, metric, mode, file_prefix=BEST_PREFIX)
        self._mode = mode
        self._patience = patience
        self._min_delta = min_delta
        self._path = os.path.join(checkpointer.save_dir, BEST_METRIC_FILE)
        self.evaluations_without_improvement = 0
        self._stop_due = False
        self._stopped = False

    def before_train(self) -> None:
        if self.trainer.start_iter > 0:  # resumed: the best of the earlier run stays the one to beat
            self._read_best()
        if self._patience and self.evaluations_without_improvement >= self._patience:
            raise TrainingStopped(
                f"This run stopped early: {self._val_metric} did not improve in "
                f"{self.evaluations_without_improvement} evaluations (patience {self._patience}); not training "
                "on from the resumed checkpoint. Raise the early-stopping patience to continue."
            )

    def _read_best(self) -> None:
        if not os.path.exists(self._path):
            return
        try:
            with open(self._path) as f:
                saved = json.load(f)
            value, iteration = float(saved["value"]), int(saved["iteration"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{self._path} is not a best-metric file ({type(e).__name__}: {e}); it should hold metric, mode, "
                "value and iteration. Delete it (and model_best.pth) to start a new best."
            ) from e
        if (saved.get("metric"), saved.get("mode")) != (self._val_metric, self._mode):
            logger.warning(
                "%s is for %s (%s), not %s (%s): starting a new best",
                self._path,
                saved.get("metric"),
                saved.get("mode"),
                self._val_metric,
                self._mode,
            )
            return
        self.best_metric, self.best_iter = value, iteration
        logger.info(
            "Best %s so far: %.5f at iteration %d (%s)",
            self._val_metric,
            self.best_metric,
            self.best_iter,
            self._path,
        )

    def _update_best(self, val: float, iteration: int) -> bool:
        updated = super()._update_best(val, iteration)
        if updated and comm.is_main_process():
            with atomic_open(self._path, "w") as f:
                json.dump(
                    {"metric": self._val_metric, "mode": self._mode, "value": val, "iteration": iteration}, f
                )
        return updated

    def _share_latest(self) -> float | None:
        """Rank 0's latest value of the metric, also put into this process's storage when it lacks it."""
        storage = self.trainer.storage
        latest = comm.all_gather(storage.latest().get(self._val_metric))[0]
        if latest is None:
            return None
        if self._val_metric not in storage.latest():
            storage.put_scalar(self._val_metric, latest[0], smoothing_hint=False)
        return latest[0]

    def _improves(self, value: float, best: float | None) -> bool:
        if math.isnan(value) or math.isinf(value):
            return False
        if best is None:
            return True
        return (value - best if self._mode == "max" else best - value) > self._min_delta

    def _best_checking(self) -> None:
        value = self._share_latest()
        best = self.best_metric
        super()._best_checking()
        if value is None or not self._patience:
            return
        if self._improves(value, best):
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
            self._stop_due = self.evaluations_without_improvement >= self._patience

    def after_step(self) -> None:
        super().after_step()
        if self._stop_due:
            self._stop()

    def after_train(self) -> None:
        if not self._stopped:  # the final evaluation after a stop is of the best weights: nothing new
            super().after_train()

    def _stop(self) -> None:
        trainer = self.trainer
        best = "none" if self.best_iter is None else f"{self.best_metric:.5g} at iteration {self.best_iter}"
        logger.info(
            "Early stopping at iteration %d: %s has not improved by more than %g in %d evaluations (best: %s); "
            "the final evaluation runs on the best weights",
            trainer.iter,
            self._val_metric,
            self._min_delta,
            self.evaluations_without_improvement,
            best,
        )
        self._stopped = True
        self._checkpointer.save(STOP_CHECKPOINT, iteration=trainer.iter)
        comm.synchronize()
        if self.best_iter is not None:
            self._checkpointer.load(
                os.path.join(self._checkpointer.save_dir, f"{BEST_PREFIX}.pth"), checkpointables=[]
            )
        trainer.max_iter = trainer.iter + 1  # Detectron2's hooks treat the run as finished
        raise TrainingStopped(f"Training stopped early at iteration {trainer.iter}")

    def state_dict(self) -> dict[str, int]:
        return {"evaluations_without_improvement": self.evaluations_without_improvement}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.evaluations_without_improvement = int(state_dict["evaluations_without_improvement"])
