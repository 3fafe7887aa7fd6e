"""Training hooks for runs that are killed, resumed or distributed."""

from __future__ import annotations

import logging
from typing import Any

from detectron2.engine import HookBase
from torch.utils.hooks import RemovableHandle

logger = logging.getLogger(__name__)


class OptimizerStepCounter(HookBase):
    """Counts ``optimizer.step()`` calls over the whole run, across kills and ``--resume``.

    The iteration counter alone cannot show that a resumed run lost or repeated no update; this count is
    stored in every checkpoint (``checkpoint["hooks"]["OptimizerStepCounter"]["steps"]``), restored on
    resume and logged when training ends, so it must equal the final iteration count.
    """

    def __init__(self) -> None:
        self.steps = 0
        self._handle: RemovableHandle | None = None

    def before_train(self) -> None:
        self._handle = self.trainer.optimizer.register_step_post_hook(self._count)

    def _count(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.steps += 1

    def after_train(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        logger.info(
            "Optimizer steps over the whole run: %d (trainer at iteration %d)", self.steps, self.trainer.iter
        )

    def state_dict(self) -> dict[str, int]:
        return {"steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.steps = int(state_dict["steps"])
