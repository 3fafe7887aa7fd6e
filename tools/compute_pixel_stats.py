#!/usr/bin/env python
"""Print MODEL.PIXEL_MEAN and MODEL.PIXEL_STD (one value per channel, YAML) for a registered dataset, with
its images read as the config's INPUT.FORMAT reads them ("RAW" for 16-bit, float and multi-band images).

    python tools/compute_pixel_stats.py --config-file configs/my_raw.yaml --dataset my_train --max-images 200
"""

from __future__ import annotations

import argparse
from argparse import Namespace

from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

from d2_maskext.cli.config_loading import load_config
from d2_maskext.data.pixel_stats import compute_pixel_stats


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML or LazyConfig .py file")
    parser.add_argument("--dataset", required=True, help="registered dataset name (DATASETS.REGISTER included)")
    parser.add_argument("--max-images", type=int, default=None, help="use this many images spread over the dataset")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides: 'KEY VALUE' pairs (YAML) or 'key=value' items (lazy configs)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    setup_logger(name="d2_maskext")
    config = load_config(args.config_file, args.opts)
    file_names = [record["file_name"] for record in DatasetCatalog.get(args.dataset)]
    stats = compute_pixel_stats(file_names, config.input_format, args.max_images, desc=f"pixel statistics of {args.dataset}")
    print(f"# {stats.num_images} images of {args.dataset} read as INPUT.FORMAT {config.input_format!r}"
          f" ({len(stats.skipped)} unreadable, skipped)")  # fmt: skip
    print(stats.yaml())
    return stats.yaml()


if __name__ == "__main__":
    main()
