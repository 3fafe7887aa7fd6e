"""What every benchmark prints first: when, at which commit, on which CPU and ISA class.

Ratios are only comparable within one run on one machine, and bfloat16 speed depends on the ISA class (AMX,
AVX512-BF16 without AMX, AVX2 only), so each table starts with this line.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_description() -> str:
    """CPU model and the widest matrix ISA class it offers (what bfloat16 and oneDNN speed depend on)."""
    from d2_maskext.modeling.precision import cpu_supports_fast_bfloat16

    flags, model = set(), ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    isa = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "AVX2" if "avx2" in flags else "pre-AVX2"
    bf16 = "native" if cpu_supports_fast_bfloat16() else "emulated"
    return f"{model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores, ISA class {isa} (bfloat16 {bf16})"


def run_header() -> str:
    """``<UTC time>, commit <sha>, <cpu_description()>`` (commit "unknown" outside a git checkout)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit or 'unknown'}, {cpu_description()}"
