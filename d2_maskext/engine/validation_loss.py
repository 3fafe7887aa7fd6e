"""Validation loss: the model's training losses on a fixed subset of the test datasets, without gradients.

Detectron2 only evaluates AP, which says nothing about over-fitting until it drops. The losses here are the
training loss terms (the model runs in training mode, so the same terms come out) on the same images each
time, so their curve is comparable with the training loss. Two sources of change are held fixed: the
proposal sampling of the ROI heads draws from a seeded generator per image (the global random states are
left as they were), and batch-norm layers use their running statistics instead of updating them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch import nn
from tqdm import tqdm

logger = logging.getLogger(__name__)

PREFIX = "validation/"
SEED = 0


def evenly_spaced(records: Sequence[dict], count: int) -> list[dict]:
    """``count`` records spread evenly over ``records`` (all of them when there are fewer)."""
    if count >= len(records):
        return list(records)
    return [records[i] for i in np.linspace(0, len(records) - 1, count).round().astype(int)]


def validation_records(dataset_names: Sequence[str], images_per_dataset: int) -> list[dict]:
    """The fixed validation subset: ``images_per_dataset`` evenly spaced records of each dataset."""
    return [r for name in dataset_names for r in evenly_spaced(DatasetCatalog.get(name), images_per_dataset)]


def _loss_sums(
    network: nn.Module, records: Sequence[dict], indices: Sequence[int], mapper: Callable[[dict], dict | None]
) -> tuple[dict[str, float], int, list[str]]:
    """Per-term loss sums over ``records[indices]``, the number of images used and the files skipped."""
    sums: dict[str, float] = {}
    used, skipped = 0, []
    cuda = next(network.parameters()).is_cuda
    for index in tqdm(indices, desc="validation loss", leave=False, disable=not comm.is_main_process()):
        inputs = mapper(records[index])
        if inputs is None:  # unreadable image, already logged and counted by the mapper
            skipped.append(str(records[index].get("file_name")))
            continue
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
            torch.manual_seed(SEED + index)  # per image: the same draws whatever the number of processes
            losses = network([inputs])
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        used += 1
    return sums, used, skipped


@torch.no_grad()
def validation_losses(
    model: nn.Module, records: Sequence[dict], mapper: Callable[[dict], dict | None]
) -> dict[str, float]:
    """Mean of each loss term and their sum (``total_loss``) over ``records``; each process computes its
    share and the sums are reduced over all of them. Empty when no image could be read."""
    network = getattr(model, "module", model)  # unwrapped: no gradient synchronisation to prepare
    modes = {m: m.training for m in network.modules()}
    network.train()
    for m in network.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()  # running statistics stay untouched
    host_rng = random.getstate(), np.random.get_state()  # the mapper's resize may draw from them
    try:
        shard = range(comm.get_rank(), len(records), comm.get_world_size())
        with EventStorage():  # what the model records in training mode stays out of the training's storage
            sums = _loss_sums(network, records, shard, mapper)
        gathered = comm.all_gather(sums)
    finally:
        for m, training in modes.items():
            m.training = training
        random.setstate(host_rng[0])
        np.random.set_state(host_rng[1])
    used = sum(n for _, n, _ in gathered)
    skipped = [f for _, _, files in gathered for f in files]
    if skipped:
        logger.warning(
            "Validation loss: skipped %d unreadable image(s) of %d: %s",
            len(skipped),
            len(records),
            skipped[:5],
        )
    if used == 0:
        return {}
    names = dict.fromkeys(name for sums, _, _ in gathered for name in sums)
    means = {name: sum(sums.get(name, 0.0) for sums, _, _ in gathered) / used for name in names}
    return {**means, "total_loss": sum(means.values())}


class ValidationLoss(HookBase):
    """Every ``period`` iterations, :func:`validation_losses` into the storage as ``validation/<name>`` (so
    metrics.json, TensorBoard and the log get them). Runs in every process."""

    def __init__(
        self, period: int, model: nn.Module, records: Sequence[dict], mapper: Callable[[dict], dict | None]
    ) -> None:
        self._period = period
        self._model = model
        self._records = list(records)
        self._mapper = mapper

    def after_step(self) -> None:
        if (self.trainer.iter + 1) % self._period == 0:
            losses = validation_losses(self._model, self._records, self._mapper)
            if not losses:
                logger.warning("Validation loss: none of the %d images could be read", len(self._records))
                return
            self.trainer.storage.put_scalars(
                **{PREFIX + k: v for k, v in losses.items()}, smoothing_hint=False
            )
            logger.info(
                "Validation loss at iteration %d on %d images: %s",
                self.trainer.iter,
                len(self._records),
                "  ".join(f"{k}: {v:.4g}" for k, v in losses.items()),
            )
