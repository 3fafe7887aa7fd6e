"""Resuming after SIGKILL, and checkpoint saves that a kill cannot corrupt.

The end-to-end test kills a real ``tools/train_net.py`` process after its first checkpoint and restarts it
with ``--resume``; the run must end at the same final iteration with exactly ``MAX_ITER`` optimizer steps.
The save tests kill a process at chosen points inside a save (half of the checkpoint written; checkpoint
complete but ``last_checkpoint`` not yet renamed) and check that resume loads the previous checkpoint.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers.train_net_runner import kill_process_group, start_train_net, tail, train_net_command

from d2_maskext.checkpoint import SafeCheckpointer
from d2_maskext.utils import atomic_open

MAX_ITER = 12
CHECKPOINT_PERIOD = 6  # checkpoints after iterations 5 and 11, then model_final.pth
# After the first checkpoint is tagged, iteration 6 or 7 is running: the next checkpoint is still six iterations
# away (a kill 0.5 s after the tag with checkpoints two iterations apart came too late once steps got fast).
KILL_DELAY_S = 0.1
STEP_COUNTER_KEY = "OptimizerStepCounter"


def _start_training(out: Path, log: Path, *flags: str) -> subprocess.Popen:
    opts = ("SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD))
    return start_train_net(train_net_command(out, *flags, opts=opts), log)


def _kill_after_first_checkpoint(
    proc: subprocess.Popen, out: Path, log: Path, timeout_s: float = 480
) -> float:
    """SIGKILL ``proc`` shortly after ``last_checkpoint`` appears; return seconds since the start."""
    started = time.monotonic()
    try:
        while not (out / "last_checkpoint").exists():
            assert proc.poll() is None, (
                f"training exited ({proc.returncode}) before a checkpoint:\n{tail(log)}"
            )
            assert time.monotonic() - started < timeout_s, f"no checkpoint after {timeout_s} s:\n{tail(log)}"
            time.sleep(0.05)
        time.sleep(KILL_DELAY_S)
        proc.send_signal(signal.SIGKILL)
        return time.monotonic() - started
    finally:
        kill_process_group(proc)


@pytest.mark.slow
def test_sigkill_then_resume_ends_at_max_iter_with_every_optimizer_step(tmp_path):
    out = tmp_path / "out"
    killed_log, resumed_log = tmp_path / "killed.log", tmp_path / "resumed.log"

    killed = _start_training(out, killed_log)
    killed_after_s = _kill_after_first_checkpoint(killed, out, killed_log)
    assert killed.returncode == -signal.SIGKILL, tail(killed_log)
    assert not (out / "model_final.pth").exists(), "the run finished before it was killed"
    tagged = (out / "last_checkpoint").read_text()
    assert tagged == f"model_{CHECKPOINT_PERIOD - 1:07d}.pth"
    checkpoint_iter = torch.load(out / tagged, weights_only=True)["iteration"]
    print(f"killed {killed_after_s:.1f} s after start, checkpoint {tagged} (iteration {checkpoint_iter})")

    resumed = _start_training(out, resumed_log, "--resume")
    try:
        assert resumed.wait(timeout=600) == 0, tail(resumed_log)
    finally:
        kill_process_group(resumed)
    assert f"Starting training from iteration {checkpoint_iter + 1}" in resumed_log.read_text()
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == MAX_ITER - 1
    assert final["trainer"]["hooks"][STEP_COUNTER_KEY]["steps"] == MAX_ITER
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


def _save_twice_and_die_in_second_save(save_dir: str, kill_point: str) -> None:
    """Runs in a forked child: save one checkpoint, then SIGKILL itself at ``kill_point`` of the next save."""
    checkpointer = SafeCheckpointer(torch.nn.Linear(64, 64), save_dir)
    checkpointer.save("model_0000001", iteration=1)
    real_save, real_replace = torch.save, os.replace

    def write_half_then_die(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def die_before_tagging(src, dst):
        if os.path.basename(dst) == "last_checkpoint":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    if kill_point == "writing-checkpoint":
        torch.save = write_half_then_die
    else:
        os.replace = die_before_tagging
    checkpointer.save("model_0000002", iteration=2)


@pytest.mark.parametrize("kill_point", ["writing-checkpoint", "renaming-last_checkpoint"])
def test_kill_during_save_leaves_previous_checkpoint_for_resume(tmp_path, kill_point):
    child = multiprocessing.get_context("fork").Process(
        target=_save_twice_and_die_in_second_save, args=(str(tmp_path), kill_point)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    leftovers = sorted(p.name for p in tmp_path.glob(".*.tmp"))
    assert len(leftovers) == 1, leftovers
    if kill_point == "writing-checkpoint":
        assert not (tmp_path / "model_0000002.pth").exists(), "a partial checkpoint got its final name"

    resumed = SafeCheckpointer(torch.nn.Linear(64, 64), str(tmp_path)).resume_or_load("", resume=True)
    assert resumed == {"iteration": 1}
    assert not list(tmp_path.glob(".*.tmp")), "leftover temp files of the killed save were not removed"


def test_failed_write_keeps_old_content_and_no_temp_file(tmp_path):
    target = tmp_path / "last_checkpoint"
    target.write_text("model_0000001.pth")
    with pytest.raises(RuntimeError, match="disk full"), atomic_open(str(target), "w") as f:
        f.write("model_00")
        raise RuntimeError("disk full")
    assert target.read_text() == "model_0000001.pth"
    assert [p.name for p in tmp_path.iterdir()] == ["last_checkpoint"]
