"""``tools/train_net.py --num-gpus 2`` on CPU: two gloo processes train, evaluate and gather on rank 0.

The evaluation set is declared only on the command line (``DATASETS.REGISTER``), so evaluating it in both
workers shows that config-declared registrations hold in every process ``launch`` spawns.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.train_net_runner import run_train_net, tail, train_net_command

from d2_maskext.data.synthetic import BUILTIN_SYNTHETIC, ensure_generated

DECLARED_VAL = "declared_tiny_val"


def _declare_tiny_val_as_coco() -> str:
    """``DATASETS.REGISTER`` value declaring the built-in tiny val images as a plain COCO dataset."""
    annotations = ensure_generated(BUILTIN_SYNTHETIC["maskext_synth_tiny_val"])
    declaration = {
        "name": DECLARED_VAL,
        "format": "coco",
        "image_root": str(annotations.parent / "images"),
        "annotations": str(annotations),
    }
    return repr([declaration])


@pytest.mark.slow
def test_two_process_cpu_training_then_evaluation_gathered_on_rank0(tmp_path):
    out, log = tmp_path / "out", tmp_path / "train_net.log"
    opts = (
        "SOLVER.MAX_ITER",
        "2",
        "DATASETS.REGISTER",
        _declare_tiny_val_as_coco(),
        "DATASETS.TEST",
        f'("{DECLARED_VAL}",)',
    )
    command = train_net_command(out, "--num-gpus", "2", "--dist-url", "auto", opts=opts)
    assert run_train_net(command, log, timeout_s=900) == 0, tail(log)

    rank0, rank1 = (out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()
    assert "World size: 2" in rank0
    for rank_log in (rank0, rank1):  # both workers train, and evaluate the declared dataset
        assert "Starting training from iteration 0" in rank_log
        assert "Start inference on 4 batches" in rank_log and "on 2 devices" in rank_log
    assert f"Evaluation results for {DECLARED_VAL}" in rank0
    assert f"Evaluation results for {DECLARED_VAL}" not in rank1, "only rank 0 reports results"

    # Each worker ran inference on half of the images; rank 0 saved predictions for all of them.
    predictions = torch.load(out / "inference" / "instances_predictions.pth", weights_only=True)
    assert sorted(p["image_id"] for p in predictions) == list(
        range(BUILTIN_SYNTHETIC["maskext_synth_tiny_val"].num_images)
    )
    final_metrics = json.loads((out / "metrics.json").read_text().splitlines()[-1])
    assert {"bbox/AP", "segm/AP"} <= final_metrics.keys()
