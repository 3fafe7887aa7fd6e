"""The tiny Mask R-CNN of the tests (``configs/quick_schedules/mask_rcnn_R18_FPN_GN_tiny.yaml``), as a
config object or a ``tools/train_net.py`` subprocess."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import yaml
from detectron2.config import CfgNode, get_cfg

from d2_maskext.config import add_maskext_config

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "quick_schedules" / "mask_rcnn_R18_FPN_GN_tiny.yaml"


def shrink_to_tiny(cfg: CfgNode) -> CfgNode:
    """Apply the tiny config's own keys (not its ``_BASE_``) over ``cfg``, e.g. a head variant's config."""
    own = yaml.safe_load(TINY_CONFIG.read_text())
    own.pop("_BASE_")
    cfg.merge_from_other_cfg(CfgNode(own))
    return cfg


def tiny_cfg(output_dir: Path, *opts: str, config: Path = TINY_CONFIG) -> CfgNode:
    """The tiny model as a config object (``config`` shrunk to it), for tests that build a model in-process."""
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(config))
    if config != TINY_CONFIG:
        shrink_to_tiny(cfg)
    cfg.merge_from_list(["OUTPUT_DIR", str(output_dir), *opts])
    return cfg


def train_net_command(output_dir: Path, *flags: str, opts: Sequence[str] = ()) -> list[str]:
    """``python tools/train_net.py FLAGS --config-file <tiny> OUTPUT_DIR <dir> OPTS``."""
    return [
        sys.executable,
        str(REPO / "tools" / "train_net.py"),
        *flags,
        "--config-file",
        str(TINY_CONFIG),
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


def load_script(path: str) -> ModuleType:
    """A repository script such as ``tools/predict.py`` (path relative to the repository), imported as a module."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
