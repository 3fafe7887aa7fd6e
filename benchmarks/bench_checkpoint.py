#!/usr/bin/env python
"""What atomic saves and weights-only loads cost, against Detectron2's stock ``DetectionCheckpointer``.

Saves and loads a training checkpoint (model + SGD momentum) of the synthetic R18-GN Mask R-CNN, and
loads a Detectron2 model-zoo style ``.pkl`` (pickled numpy arrays) of the same weights. Each operation
runs ``--repeats`` times per checkpointer (alternating, so both see the same disk and load); the table
shows medians and the SafeCheckpointer/stock ratio.

    python benchmarks/bench_checkpoint.py --repeats 5 --out output/bench_checkpoint
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.solver import build_optimizer
from tqdm import tqdm

from d2_maskext.checkpoint import SafeCheckpointer
from d2_maskext.config import add_maskext_config
from d2_maskext.engine import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "Base-Synthetic-R18-GN.yaml"


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("output/bench_checkpoint"))
    args = parser.parse_args()

    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(CONFIG))
    model = Trainer.build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the momentum buffers a real checkpoint carries

    checkpointers = {
        "stock": lambda d: DetectionCheckpointer(model, str(d), optimizer=optimizer),
        "safe": lambda d: SafeCheckpointer(model, str(d), optimizer=optimizer),
    }
    zoo_pkl = args.out / "zoo.pkl"
    args.out.mkdir(parents=True, exist_ok=True)
    zoo = {"model": {k: v.numpy() for k, v in model.state_dict().items()}, "__author__": "bench"}
    zoo_pkl.write_bytes(pickle.dumps(zoo, protocol=2))

    times: dict[tuple[str, str], list[float]] = {}
    for _ in tqdm(range(args.repeats), desc="repeats"):
        for name, make in checkpointers.items():
            folder = args.out / name
            folder.mkdir(exist_ok=True)
            checkpointer = make(folder)
            times.setdefault(("save .pth", name), []).append(
                _timed(lambda c=checkpointer: c.save("model_final"))
            )
            pth = str(folder / "model_final.pth")
            times.setdefault(("load .pth", name), []).append(_timed(lambda c=checkpointer, p=pth: c.load(p)))
            times.setdefault(("load .pkl", name), []).append(
                _timed(lambda c=checkpointer: c.load(str(zoo_pkl)))
            )

    size_mb = (args.out / "safe" / "model_final.pth").stat().st_size / 2**20
    print(
        f"\ncheckpoint: {size_mb:.0f} MiB .pth, {zoo_pkl.stat().st_size / 2**20:.0f} MiB .pkl; medians of {args.repeats}"
    )
    print("| operation | stock DetectionCheckpointer (s) | SafeCheckpointer (s) | ratio |")
    print("|---|---|---|---|")
    for op in ("save .pth", "load .pth", "load .pkl"):
        stock, safe = (statistics.median(times[(op, n)]) for n in ("stock", "safe"))
        print(f"| {op} | {stock:.3f} | {safe:.3f} | {safe / stock:.2f}x |")


if __name__ == "__main__":
    main()
