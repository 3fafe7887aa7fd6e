"""Detectron2 compatibility: every Detectron2 API the plugin relies on, probed when the package is imported.

Detectron2's ``__version__`` has read "0.6" for every source build since the v0.6 release (October 2021),
so a version number cannot tell a build that has what the plugin uses from one that lacks it. On such a
build the plugin would misbehave quietly (e.g. a checkpointer without the ``_torch_load`` hook would load
pickles without the weights-only policy), so each API is probed here instead, and a build lacking any of
them is refused at import with one message listing all of them.

This module is also the only place that imports Detectron2's private (underscore) names; the rest of the
package takes them from here.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

HOW_TO_INSTALL = (
    "Install Detectron2 built from its main branch at commit de3869e (January 2023) or later, e.g. "
    "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git', "
    "or the pure-Python wheel with pip install sal-detectron2==0.7.2 "
    "(`bash tools/bootstrap.sh` does either: D2MX_DETECTRON2=git selects the source build)."
)


def _lookup(path: str) -> tuple[Any, str]:
    """(the object named by ``module:attr.attr``, "") or (None, why it cannot be had)."""
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # a module that fails to import for any reason is unusable
        return None, f"cannot import {module_name}: {type(e).__name__}: {e}"
    for part in qualname.split("."):
        if not hasattr(obj, part):
            return None, "missing"
        obj = getattr(obj, part)
    return obj, ""


def _missing_parameters(obj: Any, parameters: tuple[str, ...]) -> list[str]:
    try:
        accepted = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return list(parameters)
    return [p for p in parameters if p not in accepted]


@dataclass(frozen=True)
class Requirement:
    """A Detectron2 object (``module:qualname``) the plugin uses, with the keyword parameters it passes."""

    path: str
    used_for: str
    parameters: tuple[str, ...] = ()

    def problem(self) -> str:
        """Why this installation does not meet the requirement; empty when it does."""
        obj, problem = _lookup(self.path)
        if obj is None:
            return problem
        absent = _missing_parameters(obj, self.parameters)
        return f"has no parameter {', '.join(absent)}" if absent else ""

    def describe(self) -> str:
        return f"{self.path.replace(':', '.')} (used by {self.used_for})"


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement(
        "detectron2.checkpoint:DetectionCheckpointer._torch_load",
        "SafeCheckpointer for weights-only loading",
        ("f",),
    ),
    Requirement(
        "detectron2.checkpoint:DetectionCheckpointer._load_file", "SafeCheckpointer for the .pkl check"
    ),
    Requirement(
        "detectron2.checkpoint:DetectionCheckpointer._load_model", "SafeCheckpointer's load report", ("checkpoint",)
    ),
    Requirement(
        "detectron2.checkpoint:DetectionCheckpointer._log_incompatible_keys",
        "SafeCheckpointer's load report",
        ("incompatible",),
    ),
    Requirement(
        "detectron2.evaluation:COCOEvaluator",
        "the evaluator (TEST.EVAL.MAX_DETS_PER_IMAGE)",
        ("max_dets_per_image", "use_fast_impl"),
    ),
    Requirement(
        "detectron2.evaluation:COCOEvaluator._eval_predictions",
        "the evaluator's Boundary AP",
        ("predictions", "img_ids"),
    ),
    Requirement(
        "detectron2.evaluation.coco_evaluation:_evaluate_predictions_on_coco",
        "the evaluation report's metrics",
        ("cocoeval_fn", "max_dets_per_image"),
    ),
    Requirement("detectron2.evaluation.coco_evaluation:COCOevalMaxDets", "the evaluation report's metrics"),
    Requirement(
        "detectron2.data.transforms:FixedSizeCrop", "the large-scale-jitter mapper", ("pad_value", "seg_pad_value")
    ),
    Requirement("detectron2.data.detection_utils:_apply_exif_orientation", "the image reader"),
    Requirement("detectron2.engine:create_ddp_model", "the trainer"),
    Requirement("detectron2.modeling:StandardROIHeads._init_box_head", "the ROI heads' pooler choice"),
    Requirement("detectron2.modeling:StandardROIHeads._init_mask_head", "the ROI heads' pooler choice"),
    Requirement("detectron2.modeling:GeneralizedRCNN._postprocess", "the Mask R-CNN meta-architecture"),
    Requirement("detectron2.modeling.poolers:assign_boxes_to_levels", "the fused FPN pooler"),
    Requirement("detectron2.layers:DepthwiseSeparableConv2d", "the lightweight mask head"),
)


def unmet_requirements(requirements: tuple[Requirement, ...] = REQUIREMENTS) -> list[tuple[Requirement, str]]:
    """Each requirement this Detectron2 does not meet, with the reason."""
    return [(r, problem) for r in requirements if (problem := r.problem())]


def check_detectron2(requirements: tuple[Requirement, ...] = REQUIREMENTS) -> str:
    """Return the installed Detectron2's version; raise one ImportError naming every missing API."""
    try:
        import detectron2
    except ImportError as exc:
        raise ImportError(f"d2_maskext needs Detectron2, which is not installed. {HOW_TO_INSTALL}") from exc
    unmet = unmet_requirements(requirements)
    if unmet:
        listed = "".join(f"\n  - {r.describe()}: {problem}" for r, problem in unmet)
        raise ImportError(
            f"The Detectron2 at {detectron2.__file__} (version {getattr(detectron2, '__version__', '?')}) "
            f"lacks {len(unmet)} API(s) d2_maskext needs:{listed}\n{HOW_TO_INSTALL}"
        )
    return str(getattr(detectron2, "__version__", "unknown"))


DETECTRON2_VERSION = check_detectron2()

# Detectron2's private names, available once the check above passed.
from detectron2.data.detection_utils import _apply_exif_orientation as apply_exif_orientation  # noqa: E402
from detectron2.evaluation.coco_evaluation import (  # noqa: E402
    _evaluate_predictions_on_coco as evaluate_predictions_on_coco,
)

__all__ = [
    "DETECTRON2_VERSION",
    "REQUIREMENTS",
    "Requirement",
    "apply_exif_orientation",
    "check_detectron2",
    "evaluate_predictions_on_coco",
    "unmet_requirements",
]
