#!/usr/bin/env python
"""Images per second of one data-loader worker for each mapper, against Detectron2's ``DatasetMapper``.

    python benchmarks/bench_mappers.py                      # 256-px synthetic data and a 1024-px case
    python benchmarks/bench_mappers.py --sizes 256 --images 60 --repeats 5

Data: the built-in synthetic generator at each size (cached under $D2MX_DATASETS or ./datasets), with its
RLE masks ("bitmask") and the same masks as polygons ("polygon", outer contours). Training-mode mapping
with the synthetic config's augmentation: shortest edge 256 (max 512) for 256-px images, 800 (max 1333,
Detectron2's COCO setting) for 1024-px images; LSJ and copy-paste use a square of the image size. One
thread (torch and OpenCV), as in one worker; mappers run round-robin and the median pass is reported.

Throughput is images per second of the process's CPU time: with one thread that is the rate of one worker
on an idle core, and it stays meaningful on a shared, loaded machine where wall-clock rates do not (the
wall-clock rate is printed too).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from tqdm import tqdm

from d2_maskext.config import add_maskext_config
from d2_maskext.data import SyntheticSpec, register_synthetic
from d2_maskext.data.mappers import build_mapper

STOCK = "DatasetMapper (Detectron2)"


def synthetic_records(size: int, num_images: int) -> tuple[str, list[dict]]:
    name = f"bench_mappers_{size}_{num_images}"
    spec = SyntheticSpec(split="train", num_images=num_images, image_size=size, min_size=size / 18, max_size=size / 2.3)
    if name not in DatasetCatalog.list():
        register_synthetic(name, spec)
    return name, DatasetCatalog.get(name)


def as_polygons(records: list[dict]) -> list[dict]:
    out = []
    for record in records:
        annotations = []
        for ann in record["annotations"]:
            contours, _ = cv2.findContours(mask_util.decode(ann["segmentation"]), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            polygons = [c.ravel().astype(float).tolist() for c in contours if len(c) >= 3]
            if polygons:
                annotations.append({**ann, "segmentation": polygons})
        out.append({**record, "annotations": annotations})
    return out


def config(size: int, dataset: str, mask_format: str) -> CfgNode:
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file("configs/synthetic/Base-Synthetic-R18-GN.yaml")
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.INPUT.MASK_FORMAT = mask_format
    if size > 512:
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (800,), 1333
    cfg.INPUT.LSJ.IMAGE_SIZE = size
    return cfg


def mappers(size: int, dataset: str, mask_format: str) -> dict[str, Callable]:
    cfg = config(size, dataset, mask_format)
    out = {STOCK: DatasetMapper(cfg, is_train=True)}
    for label, name, photometric in [
        ("MaskExtDatasetMapper", "MaskExtDatasetMapper", False),
        ("MaskExtDatasetMapper + photometric", "MaskExtDatasetMapper", True),
        ("LSJDatasetMapper", "LSJDatasetMapper", False),
        ("CopyPasteDatasetMapper", "CopyPasteDatasetMapper", False),
    ]:
        cfg = config(size, dataset, mask_format)
        cfg.INPUT.MAPPER.NAME = name
        cfg.INPUT.PHOTOMETRIC.ENABLED = photometric
        out[label] = build_mapper(cfg, is_train=True)
    return out


def measure(candidates: dict[str, Callable], records: list[dict], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (images per CPU second, images per wall second) over ``repeats`` passes, mappers alternating."""
    for mapper in candidates.values():
        for record in records[:3]:
            mapper(record)
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
    for repeat in tqdm(range(repeats), desc="passes", leave=False):
        for name, mapper in candidates.items():
            np.random.seed(repeat)
            cpu, wall = time.process_time(), time.perf_counter()
            for record in records:
                mapper(record)
            rates[name].append((len(records) / (time.process_time() - cpu), len(records) / (time.perf_counter() - wall)))
    return {name: (statistics.median(c for c, _ in r), statistics.median(w for _, w in r)) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--images", type=int, default=40, help="images per size (each pass maps all of them)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    rows = []
    for size in args.sizes:
        dataset, bitmask_records = synthetic_records(size, args.images)
        for mask_format, records in (("bitmask", bitmask_records), ("polygon", as_polygons(bitmask_records))):
            rates = measure(mappers(size, dataset, mask_format), records, args.repeats)
            stock = rates[STOCK][0]
            rows += [(size, mask_format, name, cpu, cpu / stock, wall) for name, (cpu, wall) in rates.items()]

    print(f"\none worker (1 thread), {args.images} images per size, median of {args.repeats} passes\n")
    print("| image size | masks | mapper | images/s (CPU time) | vs DatasetMapper | images/s (wall) |")
    print("|---:|---|---|---:|---:|---:|")
    for size, mask_format, name, cpu, ratio, wall in rows:
        print(f"| {size} | {mask_format} | {name} | {cpu:.1f} | {ratio:.2f}x | {wall:.1f} |")


if __name__ == "__main__":
    main()
