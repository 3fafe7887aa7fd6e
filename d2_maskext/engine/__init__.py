"""Training entry points: the trainer, its hooks and the config set-up of the command-line tools.

``SafeCheckpointer`` and ``UntrustedCheckpointError`` live in :mod:`d2_maskext.checkpoint`; they are
re-exported here because earlier releases defined them in this package.
"""

from ..checkpoint import SafeCheckpointer, UntrustedCheckpointError
from .hooks import OptimizerStepCounter
from .trainer import Trainer, setup_cfg

__all__ = ["OptimizerStepCounter", "SafeCheckpointer", "Trainer", "UntrustedCheckpointError", "setup_cfg"]
