"""The loop around training: validation loss, best checkpoint, early stopping and evaluation images.

One tiny YAML run (module fixture) trains with every key on until early stopping ends it; the tests read
its outputs and resume it. The untrained tiny model scores segm/AP 0 at every evaluation, so with a huge
MIN_DELTA no evaluation after the first one improves: the run stops after PATIENCE more evaluations.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.lazy_tiny import TINY_LAZY_CONFIG, load_tiny_lazy
from helpers.train_net_runner import run_train_net, tail, tiny_cfg, train_net_command
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from d2_maskext.engine import Trainer
from d2_maskext.engine.best_checkpoint import BEST_METRIC_FILE, BestCheckpointer
from d2_maskext.engine.lazy_training import lazy_train
from d2_maskext.engine.training_loop import lazy_loop_settings, yaml_loop_settings
from d2_maskext.engine.validation_loss import validation_losses, validation_records

TEST_SET = "maskext_synth_tiny_val"
EVAL_PERIOD = 2
PATIENCE = 2
STOP_ITER = EVAL_PERIOD * (PATIENCE + 1) - 1  # evaluations after iterations 1 (the best), 3 and 5
LOOP_OPTS = (
    "DATASETS.TEST", f'("{TEST_SET}",)',
    "TEST.EVAL_PERIOD", str(EVAL_PERIOD),
    "TEST.VAL_LOSS_PERIOD", str(EVAL_PERIOD),
    "TEST.VAL_LOSS_IMAGES", "3",
    "TEST.VIS_IMAGES", "2",
    "SOLVER.BEST_CHECKPOINT.METRIC", "segm/AP",
    "SOLVER.EARLY_STOPPING.PATIENCE", str(PATIENCE),
    "SOLVER.EARLY_STOPPING.MIN_DELTA", "1000.0",
)  # fmt: skip
MAX_ITER = 20


def _train(out: Path, *opts: str, resume: bool = False) -> Trainer:
    trainer = Trainer(tiny_cfg(out, "SOLVER.MAX_ITER", str(MAX_ITER), *LOOP_OPTS, *opts))
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def _last_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Trainer, str]:
    """A run that early stopping ended; its output folder, its trainer and the plugin's log of it."""
    out = tmp_path_factory.mktemp("stopped") / "out"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    plugin_logger = logging.getLogger("d2_maskext")
    level = plugin_logger.level
    plugin_logger.addHandler(handler)
    plugin_logger.setLevel(logging.INFO)
    try:
        trainer = _train(out)
    finally:
        plugin_logger.removeHandler(handler)
        plugin_logger.setLevel(level)
    return out, trainer, "\n".join(r.getMessage() for r in records)


@pytest.mark.slow
def test_validation_losses_are_written_as_scalars(stopped_run):
    out, _, _ = stopped_run
    metrics = _last_metrics(out)
    terms = {k: v for k, v in metrics.items() if k.startswith("validation/loss_")}
    assert {"validation/loss_cls", "validation/loss_mask", "validation/loss_rpn_cls"} <= terms.keys()
    assert all(math.isfinite(v) and v > 0 for v in terms.values())
    assert metrics["validation/total_loss"] == pytest.approx(sum(terms.values()))


@pytest.mark.slow
def test_early_stopping_keeps_the_best_checkpoint_and_a_consistent_last_checkpoint(stopped_run):
    out, trainer, log = stopped_run
    assert json.loads((out / BEST_METRIC_FILE).read_text()) == {
        "metric": "segm/AP", "mode": "max", "value": 0.0, "iteration": EVAL_PERIOD - 1
    }  # fmt: skip
    best = torch.load(out / "model_best.pth", weights_only=True)
    assert best["iteration"] == EVAL_PERIOD - 1
    assert f"Early stopping at iteration {STOP_ITER}" in log

    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == STOP_ITER
    assert final["trainer"]["hooks"]["BestCheckpointer"] == {"evaluations_without_improvement": PATIENCE}
    assert final["trainer"]["hooks"]["OptimizerStepCounter"]["steps"] == STOP_ITER + 1

    # The final evaluation ran on the best weights: they are what the model holds after training.
    weights = trainer.model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in best["model"].items())
    assert not all(torch.equal(weights[k], v) for k, v in final["model"].items())
    assert _last_metrics(out)["iteration"] == STOP_ITER and "segm/AP" in _last_metrics(out)


@pytest.mark.slow
def test_evaluation_images_reach_tensorboard(stopped_run):
    out, _, _ = stopped_run
    (events,) = out.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["images"]
    assert len(tags) == 2 and all(t.startswith("eval_images/") for t in tags)
    steps = [e.step for e in accumulator.Images(tags[0])]
    assert steps == [1, 3, 5, 5]  # each evaluation, and the final one on the best weights
    image = accumulator.Images(tags[0])[-1]
    assert image.width > 2 * image.height - 10  # ground truth beside predictions


@pytest.mark.slow
def test_resume_after_early_stop_does_not_train_on(stopped_run, caplog):
    out, _, _ = stopped_run
    before = (out / "model_final.pth").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="d2_maskext"):
        trainer = _train(out, resume=True)
    assert "This run stopped early" in caplog.text
    assert trainer.iter == STOP_ITER + 1 and (out / "model_final.pth").stat().st_mtime_ns == before
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


@pytest.mark.slow
def test_resume_with_more_patience_trains_on_and_remembers_the_best(stopped_run, tmp_path):
    out, _, _ = stopped_run
    copy = tmp_path / "out"
    copy.mkdir()
    for name in ("model_final.pth", "model_best.pth", "last_checkpoint", BEST_METRIC_FILE):
        (copy / name).write_bytes((out / name).read_bytes())
    _train(copy, "SOLVER.MAX_ITER", str(STOP_ITER + 3), "SOLVER.EARLY_STOPPING.PATIENCE", "10", resume=True)
    final = torch.load(copy / "model_final.pth", weights_only=True)
    assert final["iteration"] == STOP_ITER + 2
    # segm/AP 0 at the end is no better than the remembered best: model_best stays the one of iteration 1.
    assert json.loads((copy / BEST_METRIC_FILE).read_text())["iteration"] == EVAL_PERIOD - 1
    assert torch.load(copy / "model_best.pth", weights_only=True)["iteration"] == EVAL_PERIOD - 1


def test_validation_losses_are_deterministic_and_leave_the_model_and_rng_alone(tmp_path):
    cfg = tiny_cfg(tmp_path, "DATASETS.TEST", f'("{TEST_SET}",)')
    model = Trainer.build_model(cfg)
    model.train()
    records = validation_records([TEST_SET], 3)
    mapper = Trainer.build_validation_loss_mapper(cfg)
    rng, numpy_rng = torch.get_rng_state(), np.random.get_state()
    first = validation_losses(model, records, mapper)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert np.random.get_state()[2] == numpy_rng[2] and np.array_equal(np.random.get_state()[1], numpy_rng[1])
    assert validation_losses(model, records, mapper) == first
    assert len(records) == 3 and first["total_loss"] > 0


def _resumed_hook(out: Path, metric: str = "segm/AP") -> BestCheckpointer:
    hook = BestCheckpointer(2, SimpleNamespace(save_dir=str(out)), metric, "max")
    hook.trainer = SimpleNamespace(start_iter=6)
    hook.before_train()
    return hook


def test_best_metric_file_read_back_checked_and_named_when_broken(tmp_path):
    path = tmp_path / BEST_METRIC_FILE
    path.write_text(json.dumps({"metric": "segm/AP", "mode": "max", "value": 12.5, "iteration": 3}))
    hook = _resumed_hook(tmp_path)
    assert (hook.best_metric, hook.best_iter) == (12.5, 3)
    assert _resumed_hook(tmp_path, "bbox/AP").best_metric is None  # another metric's best: a new one starts
    path.write_text('{"metric": "segm/AP", "mode": "max", "value": ')
    with pytest.raises(ValueError, match=f"{path} is not a best-metric file"):
        _resumed_hook(tmp_path)


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (("SOLVER.BEST_CHECKPOINT.METRIC", "segm/mAP"), "SOLVER.BEST_CHECKPOINT.METRIC 'segm/mAP' is not produced"),
        (("SOLVER.BEST_CHECKPOINT.METRIC", "boundary/AP", "MODEL.MASK_ON", "False"), "'boundary/AP' is not produced"),
        (("SOLVER.BEST_CHECKPOINT.MODE", "largest"), "SOLVER.BEST_CHECKPOINT.MODE must be one of ('max', 'min')"),
        (("TEST.EVAL_PERIOD", "0"), "SOLVER.EARLY_STOPPING.PATIENCE is 2 but TEST.EVAL_PERIOD is 0"),
        (("SOLVER.BEST_CHECKPOINT.METRIC", ""), "SOLVER.EARLY_STOPPING.PATIENCE is 2 but SOLVER.BEST_CHECKPOINT.METRIC"),
        (
            ("SOLVER.BEST_CHECKPOINT.METRIC", "validation/total_loss", "TEST.VAL_LOSS_PERIOD", "0"),
            "'validation/total_loss' needs validation losses: set TEST.VAL_LOSS_PERIOD > 0",
        ),
        (("DATASETS.TEST", "()", "TEST.VAL_LOSS_PERIOD", "0"), "'segm/AP' needs an evaluation: DATASETS.TEST is empty"),
        (("TEST.VAL_LOSS_IMAGES", "0"), "TEST.VAL_LOSS_PERIOD is 2 but there are no validation images"),
        (("SOLVER.EARLY_STOPPING.MIN_DELTA", "-1.0"), "SOLVER.EARLY_STOPPING.MIN_DELTA must be >= 0"),
    ],
)
def test_bad_settings_stop_at_start_up_naming_the_key(tmp_path, opts, message):
    with pytest.raises(ValueError) as error:
        Trainer(tiny_cfg(tmp_path, *LOOP_OPTS, *opts))
    assert message in str(error.value)


def test_several_test_datasets_nest_the_metric_under_the_dataset_name(tmp_path):
    two = ("DATASETS.TEST", f'("{TEST_SET}", "maskext_synth_tiny_train")')
    with pytest.raises(ValueError, match="valid: <dataset>/<task>/<metric>"):
        Trainer(tiny_cfg(tmp_path, *LOOP_OPTS, *two))
    cfg = tiny_cfg(tmp_path, *LOOP_OPTS, *two, "SOLVER.BEST_CHECKPOINT.METRIC", f"{TEST_SET}/segm/AP-ring")
    assert yaml_loop_settings(cfg).metric == f"{TEST_SET}/segm/AP-ring"


def _tiny_lazy(out: Path):
    cfg = load_tiny_lazy(TINY_LAZY_CONFIG, out)
    cfg.train.update(max_iter=6, eval_period=EVAL_PERIOD)
    cfg.train.val_loss = {"period": EVAL_PERIOD, "images": 2}
    cfg.train.best_checkpoint = {"metric": "validation/total_loss", "mode": "min"}
    cfg.train.early_stopping = {"patience": 1, "min_delta": 1000.0}
    cfg.train.vis_images = {"count": 1, "score_threshold": 0.5}
    return cfg


def test_lazy_bad_settings_name_the_lazy_key(tmp_path):
    cfg = _tiny_lazy(tmp_path)
    cfg.train.best_checkpoint.metric = "mask/AP"
    with pytest.raises(ValueError, match="train.best_checkpoint.metric 'mask/AP' is not produced"):
        lazy_loop_settings(cfg)
    cfg.train.best_checkpoint.metric = "segm/AP"
    cfg.train.eval_period = 0
    with pytest.raises(ValueError, match="train.early_stopping.patience is 1 but train.eval_period is 0"):
        lazy_loop_settings(cfg)
    assert OmegaConf.select(cfg, "train.vis_images.count") == 1


@pytest.mark.slow
def test_lazy_training_with_every_key(tmp_path):
    out = tmp_path / "out"
    lazy_train(_tiny_lazy(out), resume=False)
    metrics = _last_metrics(out)
    assert "validation/total_loss" in metrics and "segm/AP" in metrics
    best = json.loads((out / BEST_METRIC_FILE).read_text())
    assert best["metric"] == "validation/total_loss" and best["mode"] == "min"
    assert best["iteration"] == torch.load(out / "model_best.pth", weights_only=True)["iteration"]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 2 * EVAL_PERIOD - 1
    (events,) = out.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert len(accumulator.Tags()["images"]) == 1


@pytest.mark.slow
def test_two_processes_share_the_validation_loss_and_stop_together(tmp_path):
    """Rank 1 has no evaluator results: rank 0's segm/AP decides for both, which stop after iteration 3."""
    out, log = tmp_path / "out", tmp_path / "train_net.log"
    opts = ("SOLVER.MAX_ITER", "8", *LOOP_OPTS, "TEST.VAL_LOSS_IMAGES", "4", "SOLVER.EARLY_STOPPING.PATIENCE", "1")
    command = train_net_command(out, "--num-gpus", "2", "--dist-url", "auto", opts=opts)
    assert run_train_net(command, log, timeout_s=900) == 0, tail(log)
    rank0, rank1 = (out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()
    losses = [
        [line.split("images: ")[1] for line in text.splitlines() if "Validation loss at iteration" in line]
        for text in (rank0, rank1)
    ]
    assert len(losses[0]) == 2 and losses[0] == losses[1], "both ranks log the same reduced losses"
    assert "Early stopping at iteration 3" in rank0 and "Early stopping at iteration 3" in rank1
    assert "validation/total_loss" in _last_metrics(out)
    assert json.loads((out / BEST_METRIC_FILE).read_text())["iteration"] == EVAL_PERIOD - 1
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 3
