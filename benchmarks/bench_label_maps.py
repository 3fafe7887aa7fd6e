#!/usr/bin/env python
"""How long a large instance label map takes to load as a ``label_maps`` dataset, and its peak memory.

Writes one ``--size`` x ``--size`` 16-bit label map with ``--instances`` rectangles of 25 x 40 px (later ones
painted over earlier ones, as annotation tools do) beside an 8-bit image, then loads it ``--repeats`` times
(median wall time, each load a fresh registration) and once more under ``tracemalloc`` for the peak of
Python and numpy allocations.

    python benchmarks/bench_label_maps.py --size 4096 --instances 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import cv2
import numpy as np
from detectron2.data import DatasetCatalog

from d2_maskext.data import register_dataset


def write_dataset(folder: Path, size: int, instances: int) -> None:
    rng = np.random.default_rng(0)
    ids = np.zeros((size, size), np.uint16)
    for k, (y, x) in enumerate(rng.integers(0, size - 40, (instances, 2)), start=1):
        ids[y : y + 40, x : x + 25] = k
    cv2.imwrite(str(folder / "scene.png"), np.zeros((size, size), np.uint8))
    cv2.imwrite(str(folder / "scene_masks.png"), ids, [cv2.IMWRITE_PNG_COMPRESSION, 1])


def load_once(folder: Path) -> tuple[float, int]:
    name = f"bench_label_maps_{uuid.uuid4().hex[:8]}"
    register_dataset(name, "label_maps", folder, mask_root=folder, mask_suffix="_masks")
    start = time.perf_counter()
    records = DatasetCatalog.get(name)
    return time.perf_counter() - start, len(records[0]["annotations"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_dataset(folder, args.size, args.instances)
        times, found = zip(*(load_once(folder) for _ in range(args.repeats)))
        tracemalloc.start()
        load_once(folder)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    label_map_mib = args.size * args.size * 2 / 2**20
    print(f"{args.size}x{args.size} uint16 label map ({label_map_mib:.0f} MiB), {found[0]} instances")
    print(f"load: median {statistics.median(times):.2f} s over {args.repeats} ({', '.join(f'{t:.2f}' for t in times)})")
    print(f"peak traced memory of one load: {peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
