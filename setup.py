"""Build script for d2_maskext and its ``d2_maskext._C`` extension.

C++ CPU kernels are always built. CUDA kernels are added when CUDA is usable or ``FORCE_CUDA=1``
(compile-only on a machine without a GPU). torch must be importable: install with
``pip install --no-build-isolation -e .`` so the build sees the torch you run with.
"""

from __future__ import annotations

import glob
import os
import sysconfig
from pathlib import Path

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise SystemExit(
        "d2_maskext needs torch at build time. Install torch==2.14.1 first, then "
        "`pip install --no-build-isolation -e .` (or run `bash tools/bootstrap.sh`)."
    ) from exc

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "d2_maskext" / "layers" / "csrc"


def _cuda_include_dirs() -> list[str]:
    """Headers shipped by the nvidia-*-cu13 wheels (cusparse.h, ...), which CUDA_HOME may lack."""
    site = Path(sysconfig.get_paths()["purelib"])
    return [str(p) for p in (site / "nvidia" / "cu13" / "include",) if p.is_dir()]


def _want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _extension():
    sources = sorted(glob.glob(str(CSRC / "**" / "*.cpp"), recursive=True))
    define_macros: list[tuple[str, str | None]] = []
    extra_compile_args: dict[str, list[str]] = {"cxx": ["-O3", "-fopenmp"]}
    include_dirs = [str(CSRC)]
    if _want_cuda():
        if os.environ.get("CUDA_HOME") is None and CUDA_HOME is None:
            os.environ["CUDA_HOME"] = "/usr/local/cuda"
        sources += sorted(glob.glob(str(CSRC / "**" / "*.cu"), recursive=True))
        include_dirs += _cuda_include_dirs()
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension
    return ext_cls(
        "d2_maskext._C",
        [os.path.relpath(s, ROOT) for s in sources],
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
    )


setup(
    name="d2_maskext",
    version="0.1.0",
    description="Mask R-CNN extensions for Detectron2: fused RoIAlign, head variants, datasets, evaluation",
    packages=find_packages(exclude=("tests", "tools", "benchmarks", "configs")),
    python_requires=">=3.10",
    install_requires=["torch>=2.1", "torchvision", "pycocotools", "opencv-python-headless", "tqdm"],
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
