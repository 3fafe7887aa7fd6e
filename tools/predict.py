#!/usr/bin/env python
"""Run a trained model on images or a video; write overlays and the predictions as COCO results or as
polygons that LabelMe, CVAT and QGIS open. Takes Detectron2's ``demo/demo.py`` flags, YAML and LazyConfig
files, and never loads the config's training datasets.

    python tools/predict.py --config-file configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml \\
        --input path/to/images "more/*.jpg" --output output/predict --opts MODEL.WEIGHTS output/demo/model_final.pth
    python tools/predict.py --config-file configs/lazy/synthetic/mask_rcnn_R18_FPN_GN_demo.py \\
        --video-input clip.mp4 --confidence-threshold 0.3 --opts train.init_checkpoint=model_final.pth
    python tools/predict.py --config-file ... --input images/ --output-format labelme cvat geojson

With ``--gt-json`` and ``--fiftyone NAME``, also writes the FiftyOne dataset NAME with ground truth, predictions and
FiftyOne's mask evaluation (scored at ``--confidence-threshold``; pass 0.05 for AP comparable to the evaluator's).

Writes ``overlays/`` (PNG per image, or an mp4 for a video) into ``--output`` and, per --output-format:
coco (default): ``predictions.json`` (COCO results, RLE masks) and ``images.json`` (the images and
categories those results refer to); labelme: ``labelme/<image>.json``; cvat: ``cvat/annotations.xml``
(CVAT for images 1.1); geojson: ``geojson/<image>.geojson`` (map coordinates for GeoTIFFs).
See docs/predictions_out.md.
"""

from __future__ import annotations

import argparse
from argparse import Namespace

from detectron2.utils.logger import setup_logger

from d2_maskext.cli.config_loading import is_lazy_config, load_config
from d2_maskext.data.writers import DEFAULT_POLYGON_TOLERANCE
from d2_maskext.predict import OUTPUT_FORMATS, BatchPredictor, predict

SCORE_THRESHOLD_KEYS = {False: "MODEL.ROI_HEADS.SCORE_THRESH_TEST", True: "model.roi_heads.box_predictor.test_score_thresh"}
DEVICE_KEYS = {False: "MODEL.DEVICE", True: "train.device"}


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML or LazyConfig .py file")
    sources = parser.add_mutually_exclusive_group(required=True)
    sources.add_argument(
        "--input", nargs="+", help="image files, folders of images (searched recursively) or glob patterns"
    )
    sources.add_argument("--video-input", metavar="FILE", help="a video file")
    parser.add_argument("--output", default="output/predict", help="output folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the config's)")
    parser.add_argument(
        "--confidence-threshold",
        "--score-threshold",
        dest="confidence_threshold",
        type=float,
        default=0.5,
        help="minimum score of kept instances",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument("--gt-json", default=None, help="COCO file whose image and category ids the results use")
    parser.add_argument(
        "--output-format",
        nargs="+",
        choices=OUTPUT_FORMATS,
        default=["coco"],
        help="one or more output formats (default: coco)",
    )
    parser.add_argument(
        "--polygon-tolerance",
        type=float,
        default=DEFAULT_POLYGON_TOLERANCE,
        metavar="PIXELS",
        help=f"Douglas-Peucker simplification of the polygon formats (default {DEFAULT_POLYGON_TOLERANCE}; 0: exact)",
    )
    parser.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        metavar="PIXELS",
        help="polygon formats: drop parts and holes smaller than this (default 0: keep all)",
    )
    parser.add_argument(
        "--fiftyone",
        metavar="NAME",
        help="with --gt-json: also write the persistent FiftyOne dataset NAME (ground truth, predictions, mask "
        "evaluation under the key 'eval') and print its mask mAP; needs the fiftyone extra",
    )
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides: 'KEY VALUE' pairs (YAML) or 'key=value' items (lazy configs)",
    )
    parser.add_argument("overrides", nargs=argparse.REMAINDER, default=[], help="config overrides, as --opts")
    args = parser.parse_args(argv)
    if args.fiftyone and not args.gt_json:
        parser.error("--fiftyone evaluates against ground truth: pass --gt-json")
    if args.fiftyone and "coco" not in args.output_format:
        args.output_format.append("coco")  # the dataset is written from the COCO results
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    lazy = is_lazy_config(args.config_file)
    overrides = [*args.overrides, *args.opts, f"{SCORE_THRESHOLD_KEYS[lazy]}={args.confidence_threshold}"]
    if args.device:
        overrides.append(f"{DEVICE_KEYS[lazy]}={args.device}")
    setup_logger(name="d2_maskext")
    config = load_config(args.config_file, overrides)
    predictor = BatchPredictor(config.build_inference_model(), config.test_resize(), config.input_format)
    summary = predict(
        predictor,
        config.metadata(),
        [args.video_input] if args.video_input else args.input,
        args.output,
        batch_size=args.batch_size,
        gt_json=args.gt_json,
        output_formats=args.output_format,
        polygon_tolerance=args.polygon_tolerance,
        min_area=args.min_area,
    )
    print(f"{summary.num_images} images ({summary.num_skipped} skipped), {summary.num_instances} instances")
    polygons = summary.polygons
    if set(summary.outputs) - {"coco"}:
        print(
            f"polygons: {polygons.skipped_instances} instances without a polygon skipped (empty or under --min-area), "
            f"{polygons.dropped_parts} parts and {polygons.dropped_holes} holes under --min-area dropped"
        )
    print(f"overlays:    {summary.overlays}")
    for name, path in summary.outputs.items():
        print(f"{name + ':':<12} {path}")
    if args.fiftyone:
        from d2_maskext.evaluation import write_fiftyone_dataset

        evaluation = write_fiftyone_dataset(
            args.fiftyone, args.gt_json, summary.outputs["coco"], image_paths=summary.image_files
        )
        print(evaluation.summary())


if __name__ == "__main__":
    main()
