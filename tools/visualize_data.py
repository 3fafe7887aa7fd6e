#!/usr/bin/env python
"""Draw a config's training data: the annotations as registered, or what the data loader feeds the model
(after the config's mapper: resize, flip, large-scale jitter, copy-paste, colour jitter). Detectron2's
``tools/visualize_data.py`` with YAML and LazyConfig files and the plugin's datasets and mappers.

    python tools/visualize_data.py --config-file configs/synthetic/mapper_copy_paste.yaml \\
        --source dataloader --output-dir output/vis_copy_paste
    python tools/visualize_data.py --config-file configs/lazy/synthetic/mapper_lsj.py --source annotation --show
"""

from __future__ import annotations

import argparse
import itertools
from argparse import Namespace
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data.catalog import Metadata
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

from d2_maskext.cli.config_loading import LoadedConfig, load_config
from d2_maskext.utils.image_io import RAW_FORMAT, read_image
from d2_maskext.visualization import to_display_rgb

DEFAULT_DATALOADER_IMAGES = 50  # the training loader never ends


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["annotation", "dataloader"], required=True,
                        help="the registered annotations, or the training loader's output (after augmentation)")  # fmt: skip
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML or LazyConfig .py file")
    parser.add_argument("--output-dir", default="./", help="folder for the drawn images")
    parser.add_argument("--show", action="store_true", help="show each image in a window instead of saving it")
    parser.add_argument("--num-images", type=int, default=None,
                        help=f"images to draw (default: every annotated image; {DEFAULT_DATALOADER_IMAGES} from the loader)")  # fmt: skip
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides: 'KEY VALUE' pairs (YAML) or 'key=value' items (lazy configs)")  # fmt: skip
    return parser.parse_args(argv)


def training_metadata(config: LoadedConfig) -> Metadata:
    names = config.train_dataset_names
    if not names:
        raise ValueError(f"{config.path}: the config names no training dataset")
    return MetadataCatalog.get(names[0])


def display_rgb(image: np.ndarray, input_format: str) -> np.ndarray:
    """The RGB uint8 view of an image in the config's format (``RAW``: percentile-stretched)."""
    return to_display_rgb(image) if input_format == RAW_FORMAT else utils.convert_image_to_rgb(image, input_format)


def annotation_images(config: LoadedConfig, metadata: Metadata) -> Iterator[tuple[str, np.ndarray]]:
    """Each training image with its registered annotations drawn, named after its file."""
    for record in itertools.chain.from_iterable(DatasetCatalog.get(n) for n in config.train_dataset_names):
        image = display_rgb(read_image(record["file_name"], config.input_format), config.input_format)
        drawn = Visualizer(image, metadata).draw_dataset_dict(record).get_image()
        yield Path(record["file_name"]).name, drawn


def dataloader_images(config: LoadedConfig, metadata: Metadata) -> Iterator[tuple[str, np.ndarray]]:
    """Each image the training loader yields, as the model sees it, with its targets drawn."""
    index = 0
    for batch in config.build_train_loader():
        for item in batch:
            image = display_rgb(item["image"].permute(1, 2, 0).cpu().numpy(), config.input_format)
            targets = item["instances"].get_fields() if "instances" in item else {}
            classes = targets.get("gt_classes")
            labels = [metadata.thing_classes[c] for c in classes.tolist()] if classes is not None else None
            drawn = Visualizer(image, metadata).overlay_instances(
                labels=labels, boxes=targets.get("gt_boxes"), masks=targets.get("gt_masks")
            )
            yield f"{index:05d}_{item['image_id']}.jpg", drawn.get_image()
            index += 1


def write_or_show(images: Iterable[tuple[str, np.ndarray]], output_dir: Path, show: bool) -> int:
    """Save each RGB image under ``output_dir`` (or show it); return how many there were."""
    output_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, image in images:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        if show:
            cv2.imshow("visualize_data", bgr)
            cv2.waitKey()
        else:
            cv2.imwrite(str((output_dir / name).with_suffix(".jpg")), bgr)
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger(name="d2_maskext")
    config = load_config(args.config_file, args.opts)
    metadata = training_metadata(config)
    if args.source == "annotation":
        images = annotation_images(config, metadata)
    else:
        images = dataloader_images(config, metadata)
    limit = args.num_images if args.num_images is not None else (
        None if args.source == "annotation" else DEFAULT_DATALOADER_IMAGES
    )  # fmt: skip
    count = write_or_show(itertools.islice(images, limit), Path(args.output_dir), args.show)
    print(f"{count} images from the {args.source} of {args.config_file}" + ("" if args.show else f" -> {args.output_dir}"))
    return count


if __name__ == "__main__":
    main()
