"""COCO evaluation and the evaluation report.

The report (matplotlib, HTML) and the FiftyOne dataset writer are imported on first use, so the trainer can use
:func:`build_evaluator` without loading plotting libraries.
"""

from __future__ import annotations

from typing import Any

from .coco_evaluator import build_evaluator

_REPORT_NAMES = frozenset({"ReportOptions", "write_report", "write_report_from_files"})


def __getattr__(name: str) -> Any:
    if name in _REPORT_NAMES:
        from . import report

        return getattr(report, name)
    if name == "write_fiftyone_dataset":
        from .fiftyone_dataset import write_fiftyone_dataset

        return write_fiftyone_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ReportOptions",
    "build_evaluator",
    "write_fiftyone_dataset",
    "write_report",
    "write_report_from_files",
]
