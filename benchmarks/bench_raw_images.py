#!/usr/bin/env python
"""16-bit images read two ways: clipped to 8 bits (Detectron2's reader, ``INPUT.FORMAT: BGR``) and kept as they
are (``INPUT.FORMAT: RAW``), against the same scenes stored as 8-bit colour.

The demo's synthetic scenes as single-channel 16-bit TIFF (``maskext_synth_{train,val}_u16``: values over
3,000-59,000, like fluorescence or CT), the demo config trained from scratch with the same schedule on each
input, box and mask AP on the val split, in one run:

    python benchmarks/bench_raw_images.py --iters 300
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "benchmarks"))

from demo import DEMO_CONFIG, last_eval  # noqa: E402
from machine import cpu_description  # noqa: E402

EIGHT_BIT = ("DATASETS.TRAIN", "('maskext_synth_train',)", "DATASETS.TEST", "('maskext_synth_val',)")
SIXTEEN_BIT = ("DATASETS.TRAIN", "('maskext_synth_train_u16',)", "DATASETS.TEST", "('maskext_synth_val_u16',)")


def raw_pixel_opts(max_images: int) -> tuple[str, ...]:
    """``INPUT.FORMAT RAW`` with the 16-bit train split's own mean and standard deviation (one channel)."""
    from detectron2.data import DatasetCatalog

    import d2_maskext  # noqa: F401  (registers the synthetic splits)
    from d2_maskext.data.pixel_stats import compute_pixel_stats

    files = [r["file_name"] for r in DatasetCatalog.get("maskext_synth_train_u16")]
    stats = compute_pixel_stats(files, "RAW", max_images=max_images)
    return ("INPUT.FORMAT", "RAW", "MODEL.PIXEL_MEAN", str(list(stats.mean)), "MODEL.PIXEL_STD", str(list(stats.std)))


def train_and_evaluate(out: Path, iters: int, opts: tuple[str, ...]) -> tuple[dict[str, float], float]:
    """Train the demo config for ``iters`` iterations with ``opts``; the last evaluation and the wall time."""
    start = time.monotonic()
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(DEMO_CONFIG),
           "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", str(iters), *opts]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return last_eval(out / "metrics.json"), time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300, help="training iterations of each row")
    parser.add_argument("--stats-images", type=int, default=200, help="images used for PIXEL_MEAN/PIXEL_STD")
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")
    rows = {
        "8-bit colour, BGR (reference)": EIGHT_BIT,
        "16-bit grey, BGR (clipped to 8 bits)": SIXTEEN_BIT,
        "16-bit grey, RAW": SIXTEEN_BIT + raw_pixel_opts(args.stats_images),
    }
    print(f"\n{args.iters} iterations each, demo config, val split (150 images)\n")
    print("| input | box AP | mask AP | wall s |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, opts) in enumerate(rows.items()):
            result, wall = train_and_evaluate(Path(tmp) / str(index), args.iters, opts)
            print(f"| {name} | {result['bbox/AP']:.1f} | {result['segm/AP']:.1f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
