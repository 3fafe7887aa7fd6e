"""What this CPU runs natively, asked once: the layers' fused kernels and the precision rules both depend on it."""

from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_supports_fast_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 kernels natively here (AVX512-BF16 or AMX).

    Without them bfloat16 is emulated: autocast training runs about 20x slower than float32 on an AVX2-only
    CPU, and some oneDNN entry points (weight reorders of the fused convolutions) refuse bfloat16 outright.
    Cached, and first asked at import: the model asks on every forward, also while being traced (FLOP
    counting, TorchScript tracing), where the operator's bool result cannot be recorded.
    """
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


cpu_supports_fast_bfloat16()
