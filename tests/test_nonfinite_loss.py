"""A NaN loss mid-training stops the run with Detectron2's error, the iteration, every loss and a way out."""

from __future__ import annotations

import pytest
import torch
from detectron2.engine import HookBase
from helpers.train_net_runner import tiny_cfg

from d2_maskext.engine import Trainer

LOSS_NAMES = ("loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc")


class _PoisonMaskHeadAfterFirstStep(HookBase):
    """Makes every mask-head weight NaN after iteration 0, so iteration 1's mask loss is NaN."""

    def after_step(self) -> None:
        if self.trainer.iter == 0:
            with torch.no_grad():
                for p in self.trainer.model.roi_heads.mask_head.parameters():
                    p.fill_(float("nan"))


@pytest.mark.slow
def test_nan_loss_error_names_iteration_all_losses_and_recovery(tmp_path):
    trainer = Trainer(tiny_cfg(tmp_path, "SOLVER.MAX_ITER", "3"))
    trainer.register_hooks([_PoisonMaskHeadAfterFirstStep()])
    with pytest.raises(FloatingPointError) as err:
        trainer.train()
    message = str(err.value)
    assert "Loss became infinite or NaN at iteration=1" in message
    for name in LOSS_NAMES:
        assert f"'{name}'" in message, f"{name} missing from: {message}"
    assert "'loss_mask': nan" in message
    assert "--resume" in message and "SOLVER.BASE_LR" in message
