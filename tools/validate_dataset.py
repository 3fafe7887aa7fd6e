#!/usr/bin/env python
"""Scan datasets and report every problem with counts and first examples; exit status 1 on fatal problems.

    # every dataset of DATASETS.TRAIN and DATASETS.TEST (declared ones in DATASETS.REGISTER included)
    python tools/validate_dataset.py --config-file configs/my.yaml
    python tools/validate_dataset.py --config-file configs/my.yaml --datasets my_train my_val
    # a dataset on disk, without a config
    python tools/validate_dataset.py --format coco --image-root data/images --annotations data/train.json
    python tools/validate_dataset.py --format yolo --image-root images/train --annotations labels/train \\
        --thing-classes data.yaml
    python tools/validate_dataset.py --format yolo --annotations data.yaml --split val
    python tools/validate_dataset.py --format voc_instances --image-root VOC2012/JPEGImages \\
        --annotations VOC2012 --thing-classes class_names.txt
    python tools/validate_dataset.py --format label_maps --image-root cells/images --mask-root cells/masks \\
        --mask-suffix _masks
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from d2_maskext.cli.config_loading import read_yaml_config
from d2_maskext.data import format_names, register_dataset, scan_dataset
from d2_maskext.data.registration import register_declared_datasets
from d2_maskext.data.validation import dataset_names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", help="config whose datasets (and DATASETS.REGISTER) are scanned")
    parser.add_argument("--datasets", nargs="+", help="with --config-file: scan only these datasets")
    parser.add_argument("--format", choices=format_names(), help="scan files directly in this format")
    parser.add_argument("--image-root", help="with --format: the image folder")
    parser.add_argument("--annotations", help="with --format: the annotation file or folder")
    parser.add_argument("--mask-root", help="with --format label_maps: the label-map folder (instead of --annotations)")
    parser.add_argument("--mask-suffix", default="", help="label_maps: masks are <image stem><suffix>.png/.tif")
    parser.add_argument("--class-root", help="label_maps: folder of class maps, one per mask (needs --thing-classes)")
    parser.add_argument("--class-suffix", default="", help="label_maps: class maps are <image stem><suffix>.png/.tif")
    parser.add_argument("--thing-classes", help="with --format: names file, or comma-separated class names")
    parser.add_argument("--class-map", help="with --format instance_id_png or label_maps: the class map JSON")
    parser.add_argument("--split", help="with --format yolo and a data.yaml as --annotations: train, val or test")
    parser.add_argument("--crowd-as-instances", action="store_true", help="coco: use iscrowd 1 as instances")
    parser.add_argument("--split-components", action="store_true", help="binary_masks: one instance per component")
    parser.add_argument("--min-component-area", type=int, default=1, help="with --split-components, in pixels")
    parser.add_argument("--allow-outside-root", action="store_true", help="accept annotation paths leaving the root")
    parser.add_argument("--no-images", action="store_true", help="check annotations only; do not decode images")
    parser.add_argument("--max-examples", type=int, default=5, help="examples shown per problem kind")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    if bool(args.format) == bool(args.config_file):
        parser.error("give either --config-file or --format (with --image-root and --annotations)")
    if args.format and not ((args.annotations or args.mask_root) and (args.image_root or args.split)):
        parser.error("--format needs --image-root and --annotations or --mask-root (or a YOLO data.yaml with --split)")
    return args


def _thing_classes(text: str | None) -> list[str] | str | None:
    if text is None or Path(text).is_file():
        return text
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.format:
        source = register_dataset(
            f"validate:{args.annotations or args.mask_root}",
            args.format,
            args.image_root,
            args.annotations,
            mask_root=args.mask_root,
            mask_suffix=args.mask_suffix,
            class_root=args.class_root,
            class_suffix=args.class_suffix,
            thing_classes=_thing_classes(args.thing_classes),
            class_map=args.class_map,
            allow_outside_root=args.allow_outside_root,
            split=args.split,
            crowd_as_instances=args.crowd_as_instances,
            split_components=args.split_components,
            min_component_area=args.min_component_area,
        )
        names = [source.name]
    else:
        cfg = read_yaml_config(args.config_file, args.opts)
        declared = register_declared_datasets(cfg)
        names = args.datasets or list(dict.fromkeys(dataset_names(cfg) + declared))
    reports = [scan_dataset(name, read_images=not args.no_images, max_examples=args.max_examples) for name in names]
    for report in reports:
        print(report.format())
    failed = [r.name for r in reports if not r.ok]
    print(f"fatal problems in: {', '.join(failed)}" if failed else "no fatal problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
