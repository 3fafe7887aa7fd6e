"""Tiny models saved once per test session (conftest.py's fixtures), for every test that only needs weights."""

from __future__ import annotations

from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from .train_net_runner import tiny_cfg

# Enough for confident detections on the tiny split (scores above 0.2): the fast-settings comparison needs them.
TRAINED_OPTS = ("SOLVER.MAX_ITER", "300", "SOLVER.BASE_LR", "0.02", "SOLVER.WARMUP_ITERS", "20")


def save_random_tiny(folder: Path) -> Path:
    """The tiny model with its seeded random initialisation, as ``folder/random_init.pth``."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(folder))
    DetectionCheckpointer(model, save_dir=str(folder)).save("random_init")
    return folder / "random_init.pth"


def train_tiny(folder: Path) -> Path:
    """The tiny model trained on the tiny synthetic split (``TRAINED_OPTS``), as ``folder/trained.pth``."""
    from d2_maskext.engine import Trainer

    seed_all_rng(0)
    trainer = Trainer(tiny_cfg(folder, *TRAINED_OPTS))
    trainer.train()
    DetectionCheckpointer(trainer.model, save_dir=str(folder)).save("trained")
    return folder / "trained.pth"
