"""Evaluation images in TensorBoard: a fixed handful of test images, ground truth beside predictions.

AP says how much a model improved, not what it gets wrong; the same few images at each evaluation show
that (missed thin objects, merged neighbours, wrong classes) as training goes on. 16-bit and multi-band
images are shown through ``to_display_rgb``'s percentile stretch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.engine import HookBase
from detectron2.evaluation import inference_context
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer
from torch import nn

from ..utils.image_io import ImageReadError
from ..visualization import read_image_or_blank, side_by_side

logger = logging.getLogger(__name__)

TAG = "eval_images"


def ground_truth_beside_predictions(
    record: dict, instances: Instances, metadata: Metadata, score_threshold: float
) -> np.ndarray:
    """(H, W', 3) uint8 RGB: the record's annotations on the left, ``instances`` scoring at least
    ``score_threshold`` on the right (boxes, masks, class names)."""
    image, _ = read_image_or_blank(record.get("file_name"), record["height"], record["width"])
    truth = Visualizer(image, metadata).draw_dataset_dict(record).get_image()
    shown = instances[instances.scores >= score_threshold].to("cpu")
    predicted = Visualizer(image, metadata).draw_instance_predictions(shown).get_image()
    return side_by_side(truth, predicted)


class EvalImages(HookBase):
    """At each evaluation (every ``period`` iterations and after the last one), ``records`` drawn with
    the model's predictions into the storage as ``eval_images/<i>_<file name>`` images (TensorBoard's writer
    shows them). Rank 0 only: one process draws for everyone."""

    def __init__(
        self,
        period: int,
        model: nn.Module,
        records: Sequence[dict],
        mapper: Callable[[dict], dict],
        metadata: Metadata,
        score_threshold: float,
    ) -> None:
        self._period = period
        self._model = model
        self._records = list(records)
        self._mapper = mapper
        self._metadata = metadata
        self._score_threshold = score_threshold

    @torch.no_grad()
    def _draw(self) -> None:
        network = getattr(self._model, "module", self._model)
        with inference_context(network):
            for i, record in enumerate(self._records):
                name = os.path.basename(str(record.get("file_name", "")))
                try:
                    inputs = self._mapper(record)
                except ImageReadError as e:
                    logger.warning("Evaluation image %d (%s) left out: %s", i, record.get("file_name"), e)
                    continue
                instances = network([inputs])[0]["instances"]
                panel = ground_truth_beside_predictions(
                    record, instances, self._metadata, self._score_threshold
                )
                self.trainer.storage.put_image(f"{TAG}/{i}_{name}", panel.transpose(2, 0, 1))

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._draw()

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:  # as EvalHook: not after a failed run
            self._draw()
