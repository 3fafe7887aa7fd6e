"""A tiny Mask R-CNN for tests that train for real: ``tools/train_net.py`` subprocesses or in-process configs.

The model is the synthetic R18-GN config shrunk further (32-channel FPN, small heads, 128 px images, few
proposals), so an iteration takes about a second on one CPU core.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from detectron2.config import CfgNode, get_cfg

from d2_maskext.config import add_maskext_config

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "synthetic" / "Base-Synthetic-R18-GN.yaml"
TINY_MODEL_OPTS: tuple[str, ...] = (
    "DATASETS.TRAIN", '("maskext_synth_tiny_train",)',
    "DATASETS.TEST", "()",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MIN_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "DATALOADER.NUM_WORKERS", "0",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "MODEL.ROI_MASK_HEAD.NUM_CONV", "2",
)  # fmt: skip


def tiny_cfg(output_dir: Path, *opts: str) -> CfgNode:
    """The same tiny model as a config object, for tests that build a ``Trainer`` in-process."""
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(BASE_CONFIG))
    cfg.merge_from_list([*TINY_MODEL_OPTS, "OUTPUT_DIR", str(output_dir), *opts])
    return cfg


def train_net_command(output_dir: Path, *flags: str, opts: Sequence[str] = ()) -> list[str]:
    """``python tools/train_net.py FLAGS --config-file <tiny> <tiny opts> OUTPUT_DIR <dir> OPTS``."""
    return [
        sys.executable,
        str(REPO / "tools" / "train_net.py"),
        *flags,
        "--config-file",
        str(BASE_CONFIG),
        *TINY_MODEL_OPTS,
        "OUTPUT_DIR",
        str(output_dir),
        *opts,
    ]


def start_train_net(command: list[str], log: Path) -> subprocess.Popen:
    """Start ``command`` in its own process group (see :func:`kill_process_group`), output to ``log``."""
    with log.open("w") as f:
        return subprocess.Popen(
            command, stdout=f, stderr=subprocess.STDOUT, env=_subprocess_env(), start_new_session=True
        )


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process it started (``launch`` workers outlive a killed parent)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def run_train_net(command: list[str], log: Path, timeout_s: float) -> int:
    """Run ``command`` to the end and return its exit status; on timeout kill its whole process group."""
    proc = start_train_net(command, log)
    try:
        return proc.wait(timeout=timeout_s)
    finally:
        kill_process_group(proc)


def _subprocess_env() -> dict[str, str]:
    """Environment for a training subprocess: the test datasets folder (from conftest), one thread each."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def tail(path: Path, chars: int = 4000) -> str:
    """End of a log file, for assertion messages."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"<{path} missing>"
