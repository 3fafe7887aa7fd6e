#!/usr/bin/env python
"""Write the evaluation report (one self-contained HTML file) and the COCO files it was computed from.

From a model on a registered dataset (same evaluator as ``train_net.py --eval-only``):

    python tools/eval_report.py --config-file configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml \\
        --output-dir output/report MODEL.WEIGHTS output/demo/model_final.pth

From a COCO results file and its COCO ground truth:

    python tools/eval_report.py --predictions predictions.json --gt annotations.json \\
        --image-root path/to/images --output-dir output/report

Add ``--fiftyone NAME`` to also write the persistent FiftyOne dataset NAME from the same files, with FiftyOne's
per-object TP/FP/FN under the ``eval`` key (needs the "fiftyone" extra). FiftyOne uses the MongoDB at
``$FIFTYONE_DATABASE_URI`` when that is set, else it starts its own.
"""

from __future__ import annotations

import argparse
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

from detectron2.utils.logger import setup_logger

from d2_maskext.cli.config_loading import is_lazy_config, load_config
from d2_maskext.evaluation import ReportOptions, write_report, write_report_from_files
from d2_maskext.evaluation.report import dataset_ground_truth


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="model config (model mode)")
    parser.add_argument(
        "--dataset", default=None, help="registered dataset (default: first of DATASETS.TEST)"
    )
    parser.add_argument(
        "--predictions", default=None, help="COCO results JSON (instead of running the model)"
    )
    parser.add_argument("--gt", default=None, help="COCO ground-truth JSON (with --predictions, no config)")
    parser.add_argument(
        "--image-root", default=None, help="folder of the ground-truth images (default: --gt's folder)"
    )
    parser.add_argument("--output-dir", default="output/report")
    parser.add_argument("--score-threshold", type=float, default=None, help="TEST.REPORT.SCORE_THRESHOLD")
    parser.add_argument("--iou-threshold", type=float, default=None, help="TEST.REPORT.IOU_THRESHOLD")
    parser.add_argument("--num-worst", type=int, default=None, help="TEST.REPORT.NUM_WORST_IMAGES")
    parser.add_argument(
        "--fiftyone",
        default=None,
        metavar="NAME",
        help="also write the persistent FiftyOne dataset NAME (replaced if it exists) and print its mask mAP",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides, e.g. MODEL.WEIGHTS x.pth"
    )
    args = parser.parse_args(argv)
    if bool(args.config_file) == bool(args.gt):
        parser.error(
            "give either --config-file (model or --predictions on a registered dataset) or --predictions with --gt"
        )
    if args.gt and not args.predictions:
        parser.error("--gt needs --predictions")
    return args


def _options(base: ReportOptions, args: Namespace) -> ReportOptions:
    flags = {
        "score_threshold": args.score_threshold,
        "iou_threshold": args.iou_threshold,
        "num_worst_images": args.num_worst,
    }
    return replace(base, **{k: v for k, v in flags.items() if v is not None})


def _write_fiftyone(args: Namespace, options: ReportOptions, dataset: str | None) -> None:
    """The FiftyOne dataset from the files the report was computed from, its images where the report found them."""
    from d2_maskext.evaluation import write_fiftyone_dataset

    output_dir = Path(args.output_dir)
    if dataset is None:
        image_paths, image_root = None, args.image_root or Path(args.gt).parent
    else:
        image_paths, image_root = dataset_ground_truth(dataset, output_dir)[1], None
    evaluation = write_fiftyone_dataset(
        args.fiftyone,
        output_dir / "ground_truth.json",
        output_dir / "predictions.json",
        image_paths=image_paths,
        image_root=image_root,
        max_dets_per_image=options.max_dets_per_image,
    )
    print(evaluation.summary())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logger(name="d2_maskext")
    if args.gt:
        options = _options(ReportOptions(), args)
        report = write_report_from_files(args.predictions, args.gt, args.output_dir, args.image_root, options)
        dataset = None
    else:
        if is_lazy_config(args.config_file):
            raise ValueError(
                f"{args.config_file}: for a lazy config, run tools/lazyconfig_train_net.py --eval-only, which writes "
                "this report (train.report)"
            )
        config = load_config(args.config_file, [*args.opts, "OUTPUT_DIR", args.output_dir])  # no training data read
        cfg = config.config
        dataset = args.dataset or config.test_dataset_name
        if dataset is None:
            raise ValueError(f"{args.config_file}: DATASETS.TEST is empty; name the dataset with --dataset")
        source = args.predictions or config.build_inference_model()
        options = _options(ReportOptions.from_cfg(cfg), args)
        report = write_report(cfg, source, dataset, args.output_dir, options)
    print(f"report: {report}")
    if args.fiftyone:
        _write_fiftyone(args, options, dataset)


if __name__ == "__main__":
    main()
