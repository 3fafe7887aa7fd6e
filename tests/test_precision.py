"""modeling.precision decides the compute dtype: the fallbacks it picks on devices without bfloat16 (probes
monkeypatched, so no GPU is needed), the training dtype with and without AMP, and which keys it reads."""

from __future__ import annotations

import logging

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg
from helpers.train_net_runner import REPO

from d2_maskext.config import add_maskext_config
from d2_maskext.modeling import precision
from d2_maskext.modeling.precision import ComputeSettings


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(precision, "_warned", set())


@pytest.fixture
def gpu_without_bfloat16(monkeypatch, fresh_warnings):
    monkeypatch.setattr(precision, "cuda_supports_bfloat16", lambda: False)


def test_bfloat16_on_gpu_without_it_warns_and_runs_float16(gpu_without_bfloat16, caplog):
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        for _ in range(2):
            assert precision.resolve_compute_settings(True, torch.bfloat16, "cuda") == ComputeSettings(
                channels_last=True, autocast_dtype=torch.float16
            )
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "no native bfloat16; running float16" in warnings[0]


def test_bfloat16_on_gpu_with_it_runs_bfloat16(monkeypatch):
    monkeypatch.setattr(precision, "cuda_supports_bfloat16", lambda: True)
    assert precision.resolve_compute_settings(False, torch.bfloat16, "cuda").autocast_dtype == torch.bfloat16


def test_training_that_would_run_float16_needs_the_gradient_scaler(gpu_without_bfloat16):
    """Refused on the dtype that runs (float16 from a bfloat16 setting here), not on the configured name."""
    settings = precision.resolve_compute_settings(False, torch.bfloat16, "cuda")
    with pytest.raises(ValueError, match="training would run in float16.*SOLVER.AMP.ENABLED True"):
        precision.training_dtype(settings, amp=False, device_type="cuda")
    assert precision.training_dtype(settings, amp=True, device_type="cuda") == torch.float16


@pytest.mark.parametrize(
    ("model_dtype", "amp", "device_type", "expected"),
    [
        (None, False, "cuda", torch.float32),
        (None, True, "cuda", torch.float16),  # Detectron2's AMPTrainer
        (None, True, "cpu", torch.bfloat16),  # CPUAutocastTrainer
        (torch.bfloat16, False, "cuda", torch.bfloat16),
        (torch.bfloat16, True, "cuda", torch.bfloat16),  # the model's own autocast is the inner one
        (torch.float16, True, "cuda", torch.float16),
    ],
)
def test_training_dtype_model_precision_wins_over_amp(monkeypatch, model_dtype, amp, device_type, expected):
    monkeypatch.setattr(precision, "cpu_supports_fast_bfloat16", lambda: True)
    assert precision.training_dtype(ComputeSettings(False, model_dtype), amp, device_type) == expected


def test_amp_on_cpu_without_native_bfloat16_runs_float32_and_warns_once(monkeypatch, fresh_warnings, caplog):
    monkeypatch.setattr(precision, "cpu_supports_fast_bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        assert precision.amp_autocast_dtype("cpu") is precision.amp_autocast_dtype("cpu") is None
        assert precision.training_dtype(ComputeSettings(), amp=True, device_type="cpu") == torch.float32
    assert [r.getMessage() for r in caplog.records] == [
        "SOLVER.AMP.ENABLED: this CPU has no native bfloat16 (AVX512-BF16/AMX), where bfloat16 autocast is many "
        "times slower than float32; training in float32 instead."
    ]


def test_keys_are_read_from_yacs_and_lazy_configs():
    cfg = add_maskext_config(get_cfg())
    assert precision.model_precision(cfg) == torch.float32 and not precision.amp_enabled(cfg)
    cfg.merge_from_list(["MODEL.MASKEXT.PRECISION", "bfloat16", "SOLVER.AMP.ENABLED", "True"])
    assert precision.model_precision(cfg) == torch.bfloat16 and precision.amp_enabled(cfg)
    lazy = LazyConfig.load(str(REPO / "configs" / "lazy" / "mask_rcnn_R_50_FPN_1x.py"))
    assert precision.amp_enabled(lazy) == bool(lazy.train.amp.enabled)
    lazy.train.amp.enabled = True
    assert precision.amp_enabled(lazy)
    with pytest.raises(ValueError, match="MODEL.MASKEXT.PRECISION must be one of"):
        precision.parse_precision("half")
