#!/usr/bin/env python
"""Run a trained model on an image, a folder of images or a video; write overlays and COCO results.

    python tools/predict.py --config-file configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml \\
        --input path/to/images --output output/predict MODEL.WEIGHTS output/demo/model_final.pth
    python tools/predict.py ... --input clip.mp4 --device cuda --batch-size 8 --score-threshold 0.3

Writes ``overlays/`` (PNG per image, or an mp4 for a video), ``predictions.json`` (COCO results, RLE
masks) and ``images.json`` (the images and categories those results refer to).
"""

from __future__ import annotations

import argparse
from argparse import Namespace

from detectron2.utils.logger import setup_logger

from d2_maskext.engine import setup_cfg
from d2_maskext.predict import predict


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--input", required=True, help="image file, folder of images (searched recursively) or video"
    )
    parser.add_argument("--output", default="output/predict", help="output folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: MODEL.DEVICE)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="minimum score of kept instances")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument(
        "--gt-json", default=None, help="COCO file whose image and category ids the results use"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides, e.g. MODEL.WEIGHTS x.pth"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = ["OUTPUT_DIR", args.output, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", args.score_threshold]
    if args.device:
        overrides += ["MODEL.DEVICE", args.device]
    cfg = setup_cfg(Namespace(config_file=args.config_file, opts=[*args.opts, *overrides], eval_only=True))
    setup_logger(name="d2_maskext")
    summary = predict(cfg, args.input, args.output, batch_size=args.batch_size, gt_json=args.gt_json)
    print(f"{summary.num_images} images ({summary.num_skipped} skipped), {summary.num_instances} instances")
    print(f"overlays:    {summary.overlays}")
    print(f"predictions: {summary.predictions_json}")


if __name__ == "__main__":
    main()
