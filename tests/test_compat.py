"""The Detectron2 compatibility probe: every API the plugin uses is checked, and a build lacking any of them
is refused with one message that names all of them and says how to install a suitable Detectron2."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.evaluation import coco_evaluation

from d2_maskext import _compat

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "d2_maskext"


def test_installed_detectron2_meets_every_requirement():
    assert _compat.unmet_requirements() == []
    assert _compat.check_detectron2() == _compat.DETECTRON2_VERSION


def test_every_missing_api_is_named_in_one_error(monkeypatch):
    monkeypatch.delattr(DetectionCheckpointer, "_torch_load")

    def old_evaluate(coco_gt, coco_results, iou_type, kpt_oks_sigmas=None, use_fast_impl=True, img_ids=None):
        raise AssertionError("never called")

    monkeypatch.setattr(coco_evaluation, "_evaluate_predictions_on_coco", old_evaluate)
    with pytest.raises(ImportError) as info:
        _compat.check_detectron2()
    message = str(info.value)
    assert "lacks 2 API(s)" in message
    assert "DetectionCheckpointer._torch_load (used by SafeCheckpointer for weights-only loading): missing" in message
    assert "_evaluate_predictions_on_coco" in message and "has no parameter cocoeval_fn" in message
    assert "de3869e" in message and "pip install" in message


def test_a_constructor_without_a_parameter_is_reported(monkeypatch):
    class OldFixedSizeCrop:
        def __init__(self, crop_size, pad=True, pad_value=128.0):
            pass

    monkeypatch.setattr(T, "FixedSizeCrop", OldFixedSizeCrop)
    unmet = dict((r.path, problem) for r, problem in _compat.unmet_requirements())
    assert unmet == {"detectron2.data.transforms:FixedSizeCrop": "has no parameter seg_pad_value"}


def test_a_module_that_fails_to_import_is_reported():
    requirement = _compat.Requirement("detectron2.no_such_module:thing", "a test")
    assert requirement.problem().startswith("cannot import detectron2.no_such_module: ModuleNotFoundError")


def test_missing_detectron2_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2", None)
    with pytest.raises(ImportError, match="d2_maskext needs Detectron2, which is not installed.*pip install"):
        _compat.check_detectron2()


def _private_detectron2_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("detectron2"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_only_compat_imports_private_detectron2_names():
    offending = {
        str(path.relative_to(PACKAGE_ROOT)): names
        for path in sorted(PACKAGE_ROOT.rglob("*.py"))
        if path.name != "_compat.py" and (names := _private_detectron2_imports(path))
    }
    assert offending == {}
