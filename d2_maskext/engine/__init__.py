"""Training: the YAML config's trainer, its hooks, LazyConfig training, and bfloat16 autocast in the CPU
training loop. The command-line tools' set-up lives one layer up, in :mod:`d2_maskext.cli`."""

from .hooks import OptimizerStepCounter
from .trainer import Trainer

__all__ = ["OptimizerStepCounter", "Trainer"]
