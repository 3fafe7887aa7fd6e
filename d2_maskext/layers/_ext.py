"""Loads the compiled ``d2_maskext._C`` extension once; callers fall back to PyTorch when it is absent."""

from __future__ import annotations

import logging
import warnings

logger = logging.getLogger(__name__)


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


HAS_C_EXT: bool = _load()
