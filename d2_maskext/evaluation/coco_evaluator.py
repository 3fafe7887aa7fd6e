"""The plugin's COCO evaluator: Detectron2's ``COCOEvaluator`` plus Boundary AP whenever masks are evaluated,
and :func:`build_evaluator`, shared by ``train_net.py --eval-only``, training-time evaluation and the report.

Box and mask AP are computed by the parent unchanged; Boundary AP (:mod:`.boundary`) is added to the
results as the task ``boundary``, so ``train_net.py --eval-only`` logs and prints it next to mask AP.
"""

from __future__ import annotations

import logging

from detectron2.config import CfgNode
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances
from detectron2.utils.logger import create_small_table

from ..utils.rle import RLE_FIELD
from .boundary import BOUNDARY_TASK, evaluate_boundary_results
from .coco_metrics import TaskEvaluation

logger = logging.getLogger(__name__)


def instances_to_coco_results(instances: Instances, image_id: int) -> list[dict]:
    """Detectron2's ``instances_to_coco_json``, with segmentations from RLE masks (``RLE_FIELD``, tiled inference's
    ``RLE_OUTPUT``) as well as from ``pred_masks``."""
    results = instances_to_coco_json(instances, image_id)
    if instances.has(RLE_FIELD):
        for result, rle in zip(results, instances.get(RLE_FIELD)):
            counts = rle["counts"]
            result["segmentation"] = {"size": list(rle["size"]), "counts": counts.decode() if isinstance(counts, bytes) else counts}
    return results


class MaskExtCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` whose results gain ``boundary``: AP, AP50, AP75, APs, APm, APl and ``AP-<class>``; it
    reads masks from ``pred_masks`` or from RLEs (:func:`instances_to_coco_results`)."""

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, output in zip(inputs, outputs):
            prediction = {"image_id": inp["image_id"]}
            if "instances" in output:
                prediction["instances"] = instances_to_coco_results(output["instances"].to("cpu"), inp["image_id"])
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to("cpu")
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def _eval_predictions(self, predictions: list[dict], img_ids: list[int] | None = None) -> None:
        # Copied before the parent rewrites category ids of these very dicts in place.
        results = [dict(r) for prediction in predictions for r in prediction["instances"]]
        super()._eval_predictions(predictions, img_ids=img_ids)
        if not self._do_evaluation or "segm" not in self._results:
            return
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is not None:
            to_dataset_id = {contiguous: dataset_id for dataset_id, contiguous in id_map.items()}
            for r in results:
                r["category_id"] = to_dataset_id[r["category_id"]]
        evaluation = evaluate_boundary_results(self._coco_api, results, self._max_dets_per_image[-1], img_ids)
        self._results[BOUNDARY_TASK] = boundary_results(evaluation)
        summary = {k: v for k, v in self._results[BOUNDARY_TASK].items() if "-" not in k}
        logger.info("Evaluation results for %s (Boundary IoU):\n%s", BOUNDARY_TASK, create_small_table(summary))


def boundary_results(evaluation: TaskEvaluation) -> dict[str, float]:
    """Detectron2's results layout: summary metrics, then ``AP-<class>`` (NaN for classes without ground truth)."""
    per_class = {f"AP-{name}": float(ap) for name, ap in zip(evaluation.class_names, evaluation.per_class_ap())}
    return {**evaluation.summary_metrics(), **per_class}


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """COCO box (and mask and Boundary AP, when ``MODEL.MASK_ON``) AP on ``dataset_name`` with the official
    pycocotools COCOeval.

    Detectron2's faster C++ COCOeval is not used: its numbers may differ slightly and it drops the
    per-image matches the report reads.
    """
    return MaskExtCOCOEvaluator(
        dataset_name,
        tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
        output_dir=output_folder,
        max_dets_per_image=cfg.TEST.EVAL.MAX_DETS_PER_IMAGE,
        use_fast_impl=False,
    )
