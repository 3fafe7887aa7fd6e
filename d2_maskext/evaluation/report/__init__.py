"""Evaluation report: one self-contained HTML file plus the predictions and ground truth in COCO format.

Two entry points share one builder (:mod:`.writer`):

* ``write_report(cfg, model_or_predictions, dataset_name, output_dir)`` for a registered dataset, either
  running the model through the same test loader and evaluator as ``train_net.py --eval-only`` or
  reading a COCO results file / list;
* ``write_report_from_files(predictions_json, gt_json, output_dir)`` for any COCO pair.

Files written to ``output_dir``: ``report.html``, ``metrics.json``, ``predictions.json`` (COCO results,
RLE masks) and ``ground_truth.json`` (COCO), which FiftyOne or any COCO tool can load. The numbers come from
:mod:`.analysis`; the page is built from :mod:`.metric_sections` and :mod:`.image_sections` with the HTML
blocks of :mod:`.html_blocks`.
"""

from .options import ReportOptions
from .writer import REPORT_FILE, build_report, dataset_ground_truth, write_report, write_report_from_files

__all__ = [
    "REPORT_FILE",
    "ReportOptions",
    "build_report",
    "dataset_ground_truth",
    "write_report",
    "write_report_from_files",
]
