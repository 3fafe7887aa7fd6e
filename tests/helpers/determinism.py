"""One random state for every test: results must not depend on test order or on the machine's core count."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from detectron2.utils.env import seed_all_rng

SEED = 0


def make_deterministic(seed: int = SEED) -> None:
    """Seed Python, NumPy and PyTorch (as Detectron2's ``seed_all_rng`` does) and fix PyTorch's thread count."""
    seed_all_rng(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
