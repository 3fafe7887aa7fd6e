"""Checkpoints from untrusted sources: weights-only loading, clear refusals, and the explicit opt-in.

A "malicious" file here unpickles to ``open(<marker>, "w")``: if loading ever ran it, the marker file
would appear, so every refusal also checks that no code ran.
"""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.solver import build_lr_scheduler, build_optimizer

from d2_maskext.checkpoint import ALLOW_UNSAFE_PICKLE_KEY, SafeCheckpointer, UntrustedCheckpointError
from d2_maskext.config import add_maskext_config


class _OpensFileWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def _numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy() + 1.0 for k, v in model.state_dict().items()}


def _write_pickle(path: Path, obj: object, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _weights_equal(model: torch.nn.Module, expected: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(v.numpy(), expected[k]) for k, v in model.state_dict().items())


def test_config_default_refuses_pickles_and_from_config_honours_it(tmp_path):
    cfg = add_maskext_config(get_cfg())
    assert cfg.CHECKPOINT.ALLOW_UNSAFE_PICKLE is False
    cfg.merge_from_list([ALLOW_UNSAFE_PICKLE_KEY, "True", "OUTPUT_DIR", str(tmp_path)])
    checkpointer = SafeCheckpointer.from_config(cfg, _model())
    assert checkpointer.allow_unsafe_pickle and checkpointer.save_dir == str(tmp_path)


def test_training_checkpoint_round_trips_weights_only(tmp_path):
    """Model, optimizer and LR-scheduler states of a real solver load under weights_only=True."""
    cfg = get_cfg()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 10, (5,)
    model = _model()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    SafeCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler).save(
        "model_0000000", iteration=0
    )

    fresh = _model()
    fresh_optimizer = build_optimizer(cfg, fresh)
    fresh_scheduler = build_lr_scheduler(cfg, fresh_optimizer)
    loaded = SafeCheckpointer(fresh, str(tmp_path), optimizer=fresh_optimizer, scheduler=fresh_scheduler)
    assert loaded.resume_or_load("", resume=True) == {"iteration": 0}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh_scheduler.last_epoch == scheduler.last_epoch
    assert fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


def test_pth_with_code_is_refused_with_file_and_opt_in_named(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": _model().state_dict(), "extra": _OpensFileWhenUnpickled(marker)}, path)
    with pytest.raises(UntrustedCheckpointError) as err:
        SafeCheckpointer(_model()).load(str(path))
    message = str(err.value)
    assert str(path) in message and ALLOW_UNSAFE_PICKLE_KEY in message
    assert "open" in message, "the refused global is named"
    assert not marker.exists(), "loading ran code from the file"


def test_pth_with_python_objects_loads_only_when_opted_in(tmp_path):
    path = tmp_path / "legacy.pth"
    state = _model().state_dict()
    torch.save({"model": state, "best_score": Fraction(1, 3)}, path)
    with pytest.raises(UntrustedCheckpointError, match="fractions.Fraction"):
        SafeCheckpointer(_model()).load(str(path))
    model = _model()
    extra = SafeCheckpointer(model, allow_unsafe_pickle=True).load(str(path))
    assert extra == {"best_score": Fraction(1, 3)}
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_pkl_of_numpy_arrays_loads_without_opt_in(tmp_path, protocol):
    """Detectron2 model-zoo format: {"model": {name: ndarray}, "__author__": ...}, Python 2 era protocol 2."""
    expected = _numpy_state(_model())
    path = _write_pickle(
        tmp_path / "zoo.pkl", {"model": expected, "__author__": "Detectron2 Model Zoo"}, protocol
    )
    model = _model()
    SafeCheckpointer(model).load(str(path))
    assert _weights_equal(model, expected)


def test_pth_holding_numpy_arrays_loads_without_opt_in(tmp_path):
    expected = _numpy_state(_model())
    path = tmp_path / "converted.pth"
    torch.save({"model": expected, "iteration": np.int64(7)}, path)
    model = _model()
    assert SafeCheckpointer(model).load(str(path)) == {"iteration": 7}
    assert _weights_equal(model, expected)


def test_caffe2_pkl_blobs_load_without_opt_in(tmp_path):
    """Detectron1/Caffe2 format: a dict of numpy blobs, converted by Detectron2's name matching."""
    expected = _numpy_state(_model())
    blobs = {**expected, **{f"{k}_momentum": np.zeros_like(v) for k, v in expected.items()}}
    path = _write_pickle(tmp_path / "c2.pkl", {"blobs": blobs})
    model = _model()
    SafeCheckpointer(model).load(str(path))
    assert _weights_equal(model, expected)


def test_pkl_with_code_is_refused_and_opt_in_loads_it(tmp_path):
    marker = tmp_path / "code_ran"
    expected = _numpy_state(_model())
    path = _write_pickle(
        tmp_path / "evil.pkl",
        {"model": expected, "__author__": "someone", "extra": _OpensFileWhenUnpickled(marker)},
    )
    with pytest.raises(UntrustedCheckpointError) as err:
        SafeCheckpointer(_model()).load(str(path))
    message = str(err.value)
    assert str(path) in message and ALLOW_UNSAFE_PICKLE_KEY in message and "io.open" in message
    assert not marker.exists(), "loading ran code from the file"

    model = _model()
    SafeCheckpointer(model, allow_unsafe_pickle=True).load(str(path))
    assert _weights_equal(model, expected)
    assert marker.exists(), "the opt-in unpickles everything, code included"


@pytest.mark.parametrize("name", ["model_0000001.pth", "model_final.pkl"])
def test_truncated_checkpoint_error_names_the_file(tmp_path, name):
    full = tmp_path / "full"
    if name.endswith(".pkl"):
        _write_pickle(full, {"model": _numpy_state(_model()), "__author__": "x"})
    else:
        torch.save({"model": _model().state_dict()}, full)
    path = tmp_path / name
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(RuntimeError, match=f"Cannot read checkpoint {path}"):
        SafeCheckpointer(_model()).load(str(path))
