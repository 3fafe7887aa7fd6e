"""The report's entry points and the builder they share: evaluate, then write ``report.html``,
``metrics.json``, ``predictions.json`` and ``ground_truth.json``."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import inference_on_dataset
from pycocotools.coco import COCO
from tqdm import tqdm

from ...data.mappers import build_mapper
from ..coco_evaluator import build_evaluator
from ..coco_metrics import load_coco_json, load_results_json, result_tasks
from .analysis import analyse, metrics_json
from .html_blocks import page
from .image_sections import worst_boundary_section, worst_section
from .metric_sections import ap_section, confusion_section, per_class_section, pr_section, sweep_section
from .options import ReportOptions

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"


def write_report(
    cfg: CfgNode,
    model_or_predictions: torch.nn.Module | str | Path | Sequence[dict],
    dataset_name: str,
    output_dir: str | Path,
    options: ReportOptions | None = None,
) -> Path:
    """Report for registered ``dataset_name``; returns the path of ``report.html``.

    ``model_or_predictions`` is a model (run with the evaluator of ``train_net.py --eval-only``, whose
    files land in ``output_dir/inference``), a COCO results JSON path, or a list of COCO results.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    coco_gt, image_paths = dataset_ground_truth(dataset_name, output_dir)
    if isinstance(model_or_predictions, torch.nn.Module):
        results = run_evaluator(cfg, model_or_predictions, dataset_name, output_dir / "inference")
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    elif isinstance(model_or_predictions, (str, Path)):
        results = load_results_json(model_or_predictions, coco_gt)
        tasks = result_tasks(results)
    else:
        results = list(model_or_predictions)
        tasks = result_tasks(results)
    return build_report(
        coco_gt, results, output_dir, image_paths, options or ReportOptions.from_cfg(cfg), dataset_name, tasks
    )


def write_report_from_files(
    predictions_json: str | Path,
    gt_json: str | Path,
    output_dir: str | Path,
    image_root: str | Path | None = None,
    options: ReportOptions | None = None,
) -> Path:
    """Report for a COCO results file against a COCO ground-truth file; images are looked up under
    ``image_root`` (default: the ground-truth file's folder) by their ``file_name``."""
    coco_gt = load_coco_json(gt_json)
    results = load_results_json(predictions_json, coco_gt)
    root = Path(image_root) if image_root is not None else Path(gt_json).parent
    image_paths = {img_id: root / img["file_name"] for img_id, img in coco_gt.imgs.items()}
    return build_report(
        coco_gt,
        results,
        Path(output_dir),
        image_paths,
        options or ReportOptions(),
        f"{Path(predictions_json).name} vs {gt_json}",
        result_tasks(results),
    )


def dataset_ground_truth(dataset_name: str, output_dir: Path) -> tuple[COCO, dict[int, Path]]:
    """COCO ground truth of a registered dataset and each image's path.

    Uses the dataset's ``json_file`` or converts it to COCO, as ``COCOEvaluator`` does, and records the
    converted file in the metadata so the evaluator reads the same file.
    """
    dicts = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    if not hasattr(metadata, "json_file"):
        json_path = output_dir / f"{dataset_name}_coco_format.json"
        convert_to_coco_json(dataset_name, str(json_path), allow_cached=False)
        metadata.json_file = str(json_path)
    return load_coco_json(metadata.json_file), {d["image_id"]: Path(d["file_name"]) for d in dicts}


def run_evaluator(cfg: CfgNode, model: torch.nn.Module, dataset_name: str, inference_dir: Path) -> list[dict]:
    """Run ``model`` on ``dataset_name`` with the trainer's test loader and evaluator; return COCO results."""
    loader = build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))
    evaluator = build_evaluator(cfg, dataset_name, str(inference_dir))
    inference_on_dataset(model, tqdm(loader, desc=f"inference on {dataset_name}", unit="img"), evaluator)
    results_file = inference_dir / "coco_instances_results.json"
    if not results_file.is_file():
        raise RuntimeError(f"{results_file}: the evaluator wrote no results (is {dataset_name} empty?)")
    return json.loads(results_file.read_text())


def build_report(
    coco_gt: COCO,
    results: Sequence[dict],
    output_dir: Path,
    image_paths: dict[int, Path],
    options: ReportOptions,
    title: str,
    tasks: Sequence[str] = ("bbox", "segm"),
) -> Path:
    """Evaluate ``results`` against ``coco_gt`` and write every report file into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    # Written before COCOeval, which adds its own fields to the ground-truth annotations in place.
    (output_dir / "predictions.json").write_text(json.dumps(list(results)))
    (output_dir / "ground_truth.json").write_text(json.dumps(coco_gt.dataset))
    analysis = analyse(coco_gt, results, options, tasks)
    (output_dir / "metrics.json").write_text(json.dumps(metrics_json(analysis, options), indent=2))
    sections = [
        ap_section(analysis),
        per_class_section(analysis, coco_gt, options),
        pr_section(analysis, options),
        confusion_section(analysis, options),
        sweep_section(analysis, options),
        worst_section(analysis, image_paths, options),
        worst_boundary_section(analysis, image_paths, options),
    ]
    subtitle = (
        f"{len(coco_gt.imgs)} images, {len(coco_gt.anns)} ground-truth instances, {len(results)} predictions. "
        f"AP from pycocotools COCOeval (maxDets {options.max_dets_per_image}); analysis at score >= "
        f"{options.score_threshold:g}, IoU {options.iou_threshold:g}. Files next to this report: predictions.json, "
        "ground_truth.json (COCO format), metrics.json."
    )
    report = output_dir / REPORT_FILE
    report.write_text(page(f"Evaluation report: {title}", subtitle, sections), encoding="utf-8")
    logger.info("wrote evaluation report %s", report)
    return report
