"""The suite leaves the checkout as it found it: synthetic datasets are generated in a cache folder outside it
(even when ``D2MX_DATASETS`` names the checkout's ``datasets/``, as ``.ci/run`` does), and the session-end check
of conftest.py notices anything that appears in ``datasets/`` or ``output/``."""

from __future__ import annotations

from pathlib import Path

from helpers.checkout_guard import CheckoutGuard

from d2_maskext.data.synthetic import default_root

REPO = Path(__file__).resolve().parents[1]


def test_synthetic_datasets_are_generated_outside_the_checkout():
    assert not default_root().resolve().is_relative_to(REPO)


def test_guard_names_new_dataset_splits_and_outputs_but_not_changed_files(tmp_path):
    (tmp_path / "datasets" / "maskext_synth" / "v2_train_n600").mkdir(parents=True)
    (tmp_path / "output" / "demo").mkdir(parents=True)
    guard = CheckoutGuard(tmp_path, {"datasets": 2, "output": 1})
    (tmp_path / "output" / "demo" / "metrics.json").write_text("{}")  # a training outside the suite
    assert guard.new_entries() == []

    (tmp_path / "datasets" / "maskext_synth" / "v2_val_n8_s128").mkdir()
    (tmp_path / "output" / "report").mkdir()
    assert guard.new_entries() == ["datasets/maskext_synth/v2_val_n8_s128", "output/report"]
