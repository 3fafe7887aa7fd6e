"""Training entry points."""

from .trainer import Trainer, setup_cfg

__all__ = ["Trainer", "setup_cfg"]
