"""The one owner of precision: which dtype a model computes in, in training and in inference.

Two keys ask for reduced precision. ``MODEL.MASKEXT.PRECISION`` is the model's own compute dtype, applied by
``MaskExtRCNN`` in training and inference alike. ``SOLVER.AMP.ENABLED`` (lazy configs: ``train.amp.enabled``)
autocasts the training loop only: float16 with a gradient scaler on GPU (Detectron2's ``AMPTrainer``),
bfloat16 on CPU (``CPUAutocastTrainer``). The model's autocast is the inner one, so with both set the
model's dtype runs and AMP contributes the gradient scaler. Every reader of those keys asks this module,
which also turns the wish into what this machine can honour (with one warning when it cannot).

Convolutions dominate a full-size Mask R-CNN; on CPUs with AMX/AVX512-BF16 (and on GPUs) they are several
times faster in channels-last bfloat16 than in NCHW float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from detectron2.config import CfgNode
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchvision.ops import RoIPool

from ..utils.cpu_features import cpu_supports_fast_bfloat16

logger = logging.getLogger(__name__)

PRECISION_CHOICES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cuda_supports_bfloat16() -> bool:
    """Whether the current GPU computes in bfloat16 natively (Ampere and newer); emulation does not count."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def parse_precision(name: str) -> torch.dtype:
    """``MODEL.MASKEXT.PRECISION`` as a dtype, or a ValueError listing the choices."""
    if name not in PRECISION_CHOICES:
        raise ValueError(f"MODEL.MASKEXT.PRECISION must be one of {sorted(PRECISION_CHOICES)}, got {name!r}")
    return PRECISION_CHOICES[name]


def model_precision(cfg: CfgNode) -> torch.dtype:
    """The compute dtype the config asks of the model (``MODEL.MASKEXT.PRECISION``)."""
    return parse_precision(cfg.MODEL.MASKEXT.PRECISION)


def amp_enabled(cfg: CfgNode | DictConfig) -> bool:
    """Whether the config asks for an autocast training loop: ``SOLVER.AMP.ENABLED`` (yacs) or
    ``train.amp.enabled`` (LazyConfig)."""
    if isinstance(cfg, CfgNode):
        return bool(cfg.SOLVER.AMP.ENABLED)
    return bool(OmegaConf.select(cfg, "train.amp.enabled", default=False))


@dataclass(frozen=True)
class ComputeSettings:
    """Memory format and autocast dtype of the network's convolutions and matrix products.

    ``autocast_dtype`` None means float32. Boxes, scores, losses and weights are float32 in every setting.
    """

    channels_last: bool = False
    autocast_dtype: torch.dtype | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        dtype = str(self.autocast_dtype or torch.float32).replace("torch.", "")
        return f"{dtype}, {'channels_last' if self.channels_last else 'NCHW'}"


_warned: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.log(level, message)


def _warn_once(message: str) -> None:
    _log_once(logging.WARNING, message)


def runs_channels_last(channels_last: bool, device_type: str, training: bool) -> bool:
    """Whether ``MODEL.MASKEXT.CHANNELS_LAST`` applies in this mode on ``device_type``: training on a CPU without
    native bfloat16 runs NCHW (one log line), where channels-last backward is slower than NCHW (R50-FPN
    training iteration 0.74x stock on an AVX2-only EPYC, docs/benchmarks.md) while inference gains (1.35x)."""
    if channels_last and training and device_type == "cpu" and not cpu_supports_fast_bfloat16():
        _log_once(
            logging.INFO,
            "MODEL.MASKEXT.CHANNELS_LAST: training runs NCHW on this CPU (no native bfloat16), where channels-last "
            "backward is slower; inference runs channels-last.",
        )
        return False
    return channels_last


def resolve_compute_settings(
    channels_last: bool, precision: torch.dtype, device_type: str, training: bool = False
) -> ComputeSettings:
    """The settings that run on ``device_type``: bfloat16 falls back to float32 on a CPU without native
    bfloat16 and to float16 on a GPU without it (each with one warning); float16 is refused on CPU, where
    it has no fast kernels; the memory format is :func:`runs_channels_last`'s."""
    channels_last = runs_channels_last(channels_last, device_type, training)
    if precision == torch.float32:
        return ComputeSettings(channels_last, None)
    if device_type == "cpu":
        if precision == torch.float16:
            raise ValueError(
                "MODEL.MASKEXT.PRECISION float16 is not supported on CPU (no fast float16 kernels); "
                "use bfloat16, or float32 on CPUs without AVX512-BF16/AMX"
            )
        if not cpu_supports_fast_bfloat16():
            _warn_once(
                "MODEL.MASKEXT.PRECISION bfloat16: this CPU has no native bfloat16 (AVX512-BF16/AMX), where it "
                "is slower than float32; running float32 instead."
            )
            return ComputeSettings(channels_last, None)
    elif device_type == "cuda" and precision == torch.bfloat16 and not cuda_supports_bfloat16():
        _warn_once(
            "MODEL.MASKEXT.PRECISION bfloat16: this GPU has no native bfloat16; running float16 instead "
            "(training it needs SOLVER.AMP.ENABLED for loss scaling; set float32 to avoid float16)."
        )
        return ComputeSettings(channels_last, torch.float16)
    return ComputeSettings(channels_last, precision)


def amp_autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype of the ``SOLVER.AMP.ENABLED`` training loop: float16 (with a gradient scaler) on GPU,
    bfloat16 on CPU; ``None`` (float32, one warning) on a CPU without native bfloat16, where emulated
    bfloat16 autocast trains the demo model about 20x slower than float32 (22 s against 1.1 s per iteration
    measured on an AVX2-only AMD EPYC)."""
    if device_type != "cpu":
        return torch.float16
    if not cpu_supports_fast_bfloat16():
        _warn_once(
            "SOLVER.AMP.ENABLED: this CPU has no native bfloat16 (AVX512-BF16/AMX), where bfloat16 autocast "
            "is many times slower than float32; training in float32 instead."
        )
        return None
    return torch.bfloat16


def training_dtype(model_settings: ComputeSettings, amp: bool, device_type: str) -> torch.dtype:
    """The dtype that training actually runs in, or a ValueError where that is float16 without a gradient
    scaler (its small gradients underflow).

    The model's own autocast (``model_settings``, as resolved for this device) is the inner one and wins;
    where the model runs float32, the AMP loop's autocast applies.
    """
    dtype = model_settings.autocast_dtype or (amp and amp_autocast_dtype(device_type)) or torch.float32
    if dtype == torch.float16 and not amp:
        raise ValueError(
            "training would run in float16 (MODEL.MASKEXT.PRECISION as resolved on this device), which needs "
            "loss scaling: set SOLVER.AMP.ENABLED True (lazy configs: train.amp.enabled=True; Detectron2's "
            "AMPTrainer), or MODEL.MASKEXT.PRECISION float32"
        )
    return dtype


class _Float32RoIPool(RoIPool):
    """torchvision's ``RoIPool`` has no autocast rule and wants features and boxes of one dtype: it pools
    in float32 and returns the features' dtype."""

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return super().forward(input.float(), rois.float()).to(input.dtype)


def prepare_for_autocast(model: nn.Module) -> None:
    """Make every part of ``model`` run under reduced-precision autocast, or stop with the part named.

    Detectron2's ``ROIPool`` poolers are switched (in place) to pool in float32; rotated poolers have no
    reduced-precision path and are refused.
    """
    for name, module in model.named_modules():
        if type(module) is RoIPool:
            module.__class__ = _Float32RoIPool
        elif type(module).__name__ == "ROIAlignRotated":
            raise ValueError(
                f"{name}: ROIAlignRotated has no mixed-precision support; set MODEL.MASKEXT.PRECISION float32 "
                "and SOLVER.AMP.ENABLED False, or use ROIAlignV2"
            )
