"""SOLVER.AMP.ENABLED on a CPU model trains under bfloat16 autocast; weights and inference stay float32; a CPU
without native bfloat16 trains in float32 instead.

The autocast tests run on every CPU: they declare native bfloat16 (emulated bfloat16 computes the same, slowly).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from detectron2.engine import SimpleTrainer
from helpers.train_net_runner import REPO, tiny_cfg

from d2_maskext.engine import Trainer
from d2_maskext.engine.cpu_amp import CPUAutocastTrainer
from d2_maskext.modeling import precision


@pytest.fixture
def native_bfloat16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_fast_bfloat16", lambda: True)


def _record_stem_output_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    stem_conv = model.backbone.bottom_up.stem.conv1
    stem_conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    return dtypes


@pytest.mark.slow
def test_amp_on_cpu_trains_in_bfloat16_and_keeps_float32_weights(tmp_path, native_bfloat16):
    trainer = Trainer(tiny_cfg(tmp_path, "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "2"))
    assert type(trainer._trainer) is CPUAutocastTrainer
    dtypes = _record_stem_output_dtypes(trainer.model)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    trainer.train()

    assert dtypes == [torch.bfloat16, torch.bfloat16]
    after = trainer.model.state_dict()
    assert all(after[k].dtype == before[k].dtype for k in before)
    assert any(not torch.equal(after[k], before[k]) for k in before if before[k].is_floating_point())
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(v)) for v, _ in losses)

    trainer.model.eval()
    with torch.no_grad():
        trainer.model([{"image": torch.zeros(3, 64, 64)}])
    assert dtypes[-1] == torch.float32


def test_amp_disabled_keeps_detectron2_loop(tmp_path):
    trainer = Trainer(tiny_cfg(tmp_path))
    assert type(trainer._trainer) is SimpleTrainer


def test_amp_on_a_cpu_without_native_bfloat16_trains_in_float32_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_supports_fast_bfloat16", lambda: False)
    monkeypatch.setattr(precision, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        trainer = Trainer(tiny_cfg(tmp_path, "SOLVER.AMP.ENABLED", "True"))
    assert type(trainer._trainer) is SimpleTrainer
    assert any("training in float32 instead" in r.getMessage() for r in caplog.records)


VARIANTS = sorted((REPO / "configs" / "synthetic" / "variants").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("config", VARIANTS, ids=lambda p: p.stem)
def test_every_head_variant_trains_under_bfloat16_autocast(tmp_path, config: Path, native_bfloat16):
    cfg = tiny_cfg(tmp_path, "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "1", config=config)
    trainer = Trainer(cfg)
    trainer.train()
    losses = trainer.storage.latest()
    loss_names = [k for k in losses if k.startswith("loss_")]
    assert "loss_mask" in loss_names
    assert all(math.isfinite(losses[k][0]) for k in loss_names), losses
