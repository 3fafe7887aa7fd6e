"""Mixed precision training on CPU: ``SOLVER.AMP.ENABLED`` for models whose ``MODEL.DEVICE`` is ``cpu``.

Detectron2's ``AMPTrainer`` is CUDA-only (float16 autocast with a gradient scaler) and refuses to start
without a GPU. On CPUs with bfloat16 units (AVX512-BF16, AMX) autocasting the forward pass to bfloat16
makes convolutions and matrix products markedly faster (docs/benchmarks.md has measurements). Because
bfloat16 keeps float32's exponent range, gradients need no loss scaling; parameters, optimizer state and
checkpoints stay float32, so checkpoints are interchangeable with float32 runs.
"""

from __future__ import annotations

import time

import torch
from detectron2.engine import SimpleTrainer

from ..modeling.precision import prepare_for_autocast


class CPUAutocastTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose forward pass and losses run under CPU bfloat16 autocast. The trainers pick this
    loop only where :func:`~d2_maskext.modeling.precision.amp_autocast_dtype` says bfloat16 (a CPU that runs
    it natively).

    Backward and the optimizer step run outside autocast, as PyTorch recommends; autograd computes each
    gradient in the dtype its forward op used.
    """

    def __init__(self, model: torch.nn.Module, data_loader, optimizer: torch.optim.Optimizer) -> None:
        super().__init__(model, data_loader, optimizer)
        prepare_for_autocast(model)
        self.autocast_dtype = torch.bfloat16

    def run_step(self) -> None:
        if not self.model.training:
            raise RuntimeError("[CPUAutocastTrainer] the model was switched to eval mode during training")
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast("cpu", dtype=self.autocast_dtype):
            loss_dict = self.model(data)
        losses = sum(loss.float() for loss in loss_dict.values())

        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()
