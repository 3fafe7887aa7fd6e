"""benchmarks/gpu_check.sh on a machine without a GPU: its summary, output folder and exit status.

The CUDA steps themselves run only on a GPU machine (docs/gpu.md); here the script's plumbing is checked:
dry run, no-GPU skips, the deadline, and that it always ends with its summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
GPU_STEPS = ("build CUDA extension", "tests/test_cuda.py", "bench_roi_align.py (cuda)", "bench_e2e.py (cuda, quick)")


def run_check(tmp_path: Path, **env: str) -> tuple[int, str, dict[str, list[str]]]:
    """(exit status, summary.md, {step: [required, status, seconds, note]}) of one run into tmp_path/out."""
    out = tmp_path / "out"
    wheels = tmp_path / "no_wheels"
    wheels.mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "OUT": str(out),
        "D2MX_PYTHON": sys.executable,
        "D2MX_GPU_WHEELS": str(wheels),
        "CUDA_VISIBLE_DEVICES": "",
        "TMPDIR": str(tmp_path),
        **env,
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=120, check=False
    )
    summary = (out / "summary.md").read_text()
    assert summary in proc.stdout, proc.stdout + proc.stderr
    rows = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and cells[0] not in ("step", "---"):
            rows[cells[0]] = cells[1:]
    return proc.returncode, summary, rows


def test_dry_run_lists_every_step_and_exits_zero(tmp_path):
    code, summary, rows = run_check(tmp_path, D2MX_GPU_CHECK_DRY_RUN="1")
    assert code == 0, summary
    assert rows["environment"][:2] == ["yes", "ok"]
    assert "cuda_available=0" in summary
    for name in ("install wheels", *GPU_STEPS):
        assert rows[name][1] == "skipped" and rows[name][3].startswith("dry run; would run:"), rows[name]
    assert "--junitxml=" in rows["tests/test_cuda.py"][3]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["environment.log", "summary.md"]


def test_without_gpu_the_cuda_steps_are_skipped_and_the_check_fails(tmp_path):
    code, summary, rows = run_check(tmp_path)
    assert code == 1, summary
    # No wheels given: the step passes because .venv already has Detectron2.
    assert rows["install wheels"][1] == "ok"
    for name in GPU_STEPS:
        assert rows[name][1:] == ["skipped", "0", "no CUDA GPU visible to torch"]
    assert rows["tests/test_cuda.py"][0] == "yes" and rows["bench_e2e.py (cuda, quick)"][0] == "no"
    assert summary.rstrip().endswith("exit status: 1")


def test_spent_deadline_skips_every_step_but_still_summarizes(tmp_path):
    code, summary, rows = run_check(tmp_path, D2MX_GPU_CHECK_DEADLINE="3", D2MX_GPU_CHECK_DRY_RUN="1")
    assert code == 1
    assert len(rows) == 6
    assert all(status == "skipped" and note.startswith("deadline:") for _, status, _, note in rows.values())


def test_bad_deadline_is_a_usage_error(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "OUT": str(tmp_path), "D2MX_GPU_CHECK_DEADLINE": "9m"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "D2MX_GPU_CHECK_DEADLINE must be whole seconds, got '9m'" in proc.stderr
