"""``tools/train_net.py --num-gpus 2`` on CPU: two gloo processes train, evaluate and gather on rank 0."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from train_net_runner import subprocess_env, tail, train_net_command

from d2_maskext.data.synthetic import BUILTIN_SYNTHETIC

VAL = "maskext_synth_tiny_val"


@pytest.mark.slow
def test_two_process_cpu_training_then_evaluation_gathered_on_rank0(tmp_path):
    out, log = tmp_path / "out", tmp_path / "train_net.log"
    command = train_net_command(
        out, "--num-gpus", "2", "--dist-url", "auto", opts=("SOLVER.MAX_ITER", "2", "DATASETS.TEST", f'("{VAL}",)')
    )
    with log.open("w") as f:
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env(), timeout=480)
    assert result.returncode == 0, tail(log)

    rank0, rank1 = (out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()
    assert "World size: 2" in rank0
    for rank_log in (rank0, rank1):  # both workers see the datasets and train
        assert "Starting training from iteration 0" in rank_log
        assert "on 2 devices" in rank_log, "inference did not run in both workers"
    assert f"Evaluation results for {VAL}" in rank0
    assert f"Evaluation results for {VAL}" not in rank1, "only rank 0 reports results"

    # Each worker ran inference on half of the images; rank 0 saved predictions for all of them.
    predictions = torch.load(out / "inference" / "instances_predictions.pth", weights_only=True)
    assert sorted(p["image_id"] for p in predictions) == list(range(BUILTIN_SYNTHETIC[VAL].num_images))
    final_metrics = json.loads((out / "metrics.json").read_text().splitlines()[-1])
    assert {"bbox/AP", "segm/AP"} <= final_metrics.keys()
