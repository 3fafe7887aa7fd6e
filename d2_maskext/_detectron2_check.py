"""Fail early, with install instructions, when detectron2 is missing or too old."""

from __future__ import annotations

MIN_DETECTRON2 = "0.6"

_HOW_TO_INSTALL = (
    "Install it with `bash tools/bootstrap.sh` (pure-Python sal-detectron2==0.7.2 wheel), or from source with "
    "`D2MX_DETECTRON2=git bash tools/bootstrap.sh` "
    "(i.e. pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git')."
)


def check_detectron2() -> str:
    """Return the installed detectron2 version, or raise ImportError saying how to install it."""
    try:
        import detectron2
    except ImportError as exc:
        raise ImportError(f"d2_maskext needs detectron2>={MIN_DETECTRON2}, which is not installed. {_HOW_TO_INSTALL}") from exc
    from packaging.version import Version

    version = getattr(detectron2, "__version__", "0")
    if Version(version) < Version(MIN_DETECTRON2):
        raise ImportError(
            f"d2_maskext needs detectron2>={MIN_DETECTRON2}, found {version} at {detectron2.__file__}. {_HOW_TO_INSTALL}"
        )
    return version
