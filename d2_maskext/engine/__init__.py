"""Training entry points."""

from .checkpoint import SafeCheckpointer, UntrustedCheckpointError
from .hooks import OptimizerStepCounter
from .trainer import Trainer, setup_cfg

__all__ = ["OptimizerStepCounter", "SafeCheckpointer", "Trainer", "UntrustedCheckpointError", "setup_cfg"]
