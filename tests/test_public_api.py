"""``import d2_maskext`` exposes the public API, stays light (no engine, report, plotting or checkpointer
until first used) and registers the built-in synthetic datasets without generating anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import d2_maskext


def test_every_public_name_resolves():
    for name in d2_maskext.__all__:
        assert getattr(d2_maskext, name) is not None, name
    assert set(d2_maskext.__all__) <= set(dir(d2_maskext))


def test_lazy_names_are_the_modules_own_objects():
    from d2_maskext.checkpoint import SafeCheckpointer
    from d2_maskext.cli import setup_cfg
    from d2_maskext.engine import Trainer
    from d2_maskext.evaluation.report import write_report

    assert d2_maskext.Trainer is Trainer
    assert d2_maskext.setup_cfg is setup_cfg
    assert d2_maskext.SafeCheckpointer is SafeCheckpointer
    assert d2_maskext.write_report is write_report


def test_unknown_attribute_raises_attribute_error():
    try:
        d2_maskext.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("expected AttributeError")


@pytest.mark.slow
def test_import_is_light_and_generates_no_data(tmp_path):
    code = (
        "import json, sys, d2_maskext\n"
        "from detectron2.data import DatasetCatalog\n"
        "heavy = ['matplotlib', 'd2_maskext.engine', 'd2_maskext.evaluation.report', 'd2_maskext.predict',"
        " 'd2_maskext.checkpoint', 'fiftyone']\n"
        "print(json.dumps({'loaded': [m for m in heavy if m in sys.modules],"
        " 'registered': 'maskext_synth_train' in DatasetCatalog.list()}))\n"
    )
    env = {**os.environ, "D2MX_DATASETS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"loaded": [], "registered": True}
    assert list(tmp_path.iterdir()) == []
