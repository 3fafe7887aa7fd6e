"""Loads the compiled ``d2_maskext._C`` extension once and records which devices its kernels serve.

Callers use the compiled op only for tensors on those devices and fall back to PyTorch otherwise: a ``_C``
built without CUDA (no nvcc where it was installed) still serves CPU tensors, and CUDA tensors take the
pure-PyTorch path instead of failing in the dispatcher.
"""

from __future__ import annotations

import warnings

import torch

# Dispatch keys of the device types a kernel can be registered for.
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}


def _load() -> bool:
    try:
        from d2_maskext import _C  # noqa: F401  (registers torch.ops.d2_maskext.*)
    except ImportError as exc:
        warnings.warn(
            f"d2_maskext._C could not be loaded ({exc}); RoIAlign falls back to pure PyTorch, which is slower. "
            "Rebuild with `bash tools/bootstrap.sh`.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def kernel_device_types(op_name: str) -> frozenset[str]:
    """Device types (``"cpu"``, ``"cuda"``, ``"meta"``) with a kernel registered for ``op_name`` (``ns::op``)."""
    return frozenset(
        device
        for device, key in _DISPATCH_KEYS.items()
        if torch._C._dispatch_has_kernel_for_dispatch_key(op_name, key)
    )


HAS_C_EXT: bool = _load()
ROI_ALIGN_DEVICE_TYPES: frozenset[str] = (
    kernel_device_types("d2_maskext::roi_align") if HAS_C_EXT else frozenset()
)
"""Devices whose tensors ``torch.ops.d2_maskext.roi_align`` accepts; empty without the extension."""

if HAS_C_EXT and "cuda" not in ROI_ALIGN_DEVICE_TYPES and torch.cuda.is_available():
    warnings.warn(
        "d2_maskext._C was built without CUDA kernels; RoIAlign on CUDA tensors falls back to pure PyTorch, "
        "which is slower. Rebuild with `FORCE_CUDA=1 pip install --no-build-isolation -e .` where nvcc is "
        "available.",
        RuntimeWarning,
        stacklevel=2,
    )
