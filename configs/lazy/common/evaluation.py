"""The plugin's COCO evaluator (box, mask and Boundary AP with the official COCOeval), as ``dataloader.evaluator``.

Its results file lands in ``train.output_dir/inference``, where the report reads it.
"""

from detectron2.config import LazyCall as L

from d2_maskext.evaluation.coco_evaluator import MaskExtCOCOEvaluator

evaluator = L(MaskExtCOCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    tasks=("bbox", "segm"),
    output_dir="${...train.output_dir}/inference",
    max_dets_per_image=100,  # as TEST.EVAL.MAX_DETS_PER_IMAGE
    use_fast_impl=False,
)
