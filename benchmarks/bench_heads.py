#!/usr/bin/env python
"""The head study: every head variant, the stock heads and PointRend, trained alike on a split, over seeds.

Heads: the stock base config, each ``configs/synthetic/variants/*.yaml`` and the peers in
``configs/synthetic/peers/`` (PointRend, from ``detectron2.projects.point_rend``). Splits: ``demo`` (the demo's
256 px scenes) or ``boundary`` (``configs/synthetic/boundary/``: 150-500 px gears, wheels, letters, twigs and
spirals in 640 px images; the split's data, input sizes and anchors are laid over each head's config).

Each (split, head, seed) trains ``--iters`` iterations (from scratch, or from a stock checkpoint with
``--weights``), is evaluated at 80% of the schedule and at its end (so the table shows whether it converged:
the change of mask AP between the two, and of the total loss over the last 10% of iterations), and is timed
image by image. Results go to ``<out>/<split>/<head>/seed<N>/result.json``; an interrupted run resumes.

The table gives the mean over seeds and, after ±, half the range between seeds: box AP, mask AP, AP75, APl,
Boundary AP, train s/iter, inference ms/image, parameters, and ratios to stock from the same run.

    python benchmarks/bench_heads.py --split boundary --iters 1500 --seeds 1 2 --out output/bench_heads
    python benchmarks/bench_heads.py --split demo --iters 150 --weights output/demo/model_final.pth --out output/bench_heads_ft
    python benchmarks/bench_heads.py --split boundary --out output/bench_heads --table-only
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch
import yaml
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import setup_logger
from machine import run_header
from tqdm import tqdm

from d2_maskext.cli.config_loading import read_yaml_config
from d2_maskext.data.mappers import build_mapper
from d2_maskext.engine import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
STOCK = "stock"
SPLITS = {"demo": None, "boundary": CONFIGS / "boundary" / "mask_rcnn_R18_FPN_GN_boundary.yaml"}
METRICS = (("box AP", "bbox", "AP"), ("mask AP", "segm", "AP"), ("AP75", "segm", "AP75"), ("APl", "segm", "APl"),
           ("Boundary AP", "boundary", "AP"))  # fmt: skip
logger = logging.getLogger("bench_heads")


def head_configs() -> dict[str, Path]:
    heads = {STOCK: CONFIGS / "Base-Synthetic-R18-GN.yaml"}
    heads.update((p.stem, p) for p in sorted((CONFIGS / "variants").glob("*.yaml")))
    heads.update((p.stem, p) for p in sorted((CONFIGS / "peers").glob("*.yaml")))
    return heads


def build_cfg(config: Path, split: str, seed: int, args: argparse.Namespace, output_dir: Path) -> CfgNode:
    """The head's config on ``split`` and the shared schedule: same seed, iterations, LR steps and batch."""
    cfg = read_yaml_config(config)
    if SPLITS[split] is not None:  # the split config's own keys (data, sizes, anchors) over the head's config
        own = yaml.safe_load(SPLITS[split].read_text())
        own.pop("_BASE_")
        cfg.merge_from_other_cfg(CfgNode(own))
    cfg.merge_from_list(args.opts)
    cfg.SEED = seed
    cfg.SOLVER.MAX_ITER = args.iters
    cfg.SOLVER.STEPS = tuple(sorted({int(args.iters * 0.75), int(args.iters * 0.9)} - {0}))
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, args.iters // 4)
    cfg.SOLVER.CHECKPOINT_PERIOD = args.iters + 1  # only the final model is saved
    cfg.TEST.EVAL_PERIOD = max(1, round(args.iters * 0.8))  # once at 80%, and at the end
    cfg.MODEL.WEIGHTS = args.weights
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.freeze()
    return cfg


def time_inference(cfg: CfgNode, model: torch.nn.Module, max_images: int) -> float:
    """Median ms per image of the model's forward, batch of one, on the first test images."""
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0], mapper=build_mapper(cfg, is_train=False))
    times = []
    model.eval()
    with torch.no_grad():
        for index, inputs in enumerate(loader):
            if index >= max_images:
                break
            start = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:] or times)


def relative_loss_change(trainer: Trainer) -> float:
    """Mean total loss over the last 10% of iterations relative to the 10% before (about 0 when flat)."""
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    n = max(1, len(losses) // 10)
    before, last = statistics.mean(losses[-2 * n : -n] or losses[:n]), statistics.mean(losses[-n:])
    return (last - before) / before


def run_head(name: str, config: Path, split: str, seed: int, args: argparse.Namespace) -> dict:
    output_dir = args.out / split / name / f"seed{seed}"
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(str(output_dir / "log.txt"), name="d2_maskext")
    cfg = build_cfg(config, split, seed, args, output_dir)
    DatasetCatalog.get(cfg.DATASETS.TEST[0])  # generated before the evaluator reads its JSON
    torch.manual_seed(seed)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results  # the end-of-training evaluation (DefaultTrainer keeps it)
    mid_ap = [v for v, _ in trainer.storage.history("segm/AP").values()][0]
    step_times = [t for t, _ in trainer.storage.history("time").values()]  # IterationTimer skips warm-up
    model = trainer.model
    result = {
        "head": name,
        "split": split,
        "seed": seed,
        "config": str(config.relative_to(CONFIGS.parent.parent)),
        "iters": args.iters,
        "init": args.weights or "scratch",
        **{label: results[task][key] for label, task, key in METRICS},
        "mask AP change, last 20%": results["segm"]["AP"] - mid_ap,
        "loss change, last 10%": relative_loss_change(trainer),
        "train s/iter": statistics.median(step_times),
        "infer ms/img": time_inference(cfg, model, args.timing_images),
        "params (M)": sum(p.numel() for p in model.parameters()) / 1e6,
        "mask head (M)": sum(p.numel() for p in model.roi_heads.mask_head.parameters()) / 1e6,
    }
    (output_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(results: dict[str, list[dict]]) -> str:
    """Markdown: mean ± half the range over seeds; ratios to the stock heads of the same run."""
    columns = [label for label, _, _ in METRICS] + [
        "mask AP change, last 20%", "loss change, last 10%", "train s/iter", "infer ms/img", "params (M)", "mask head (M)",
    ]  # fmt: skip
    ratio_columns = {"train s/iter", "infer ms/img"}
    stock = results.get(STOCK)
    lines = [f"| head | seeds | {' | '.join(columns)} |", "| --- | ---: |" + " ---: |" * len(columns)]
    for name, runs in results.items():
        cells = []
        for column in columns:
            values = [r[column] for r in runs]
            mean, spread = statistics.mean(values), (max(values) - min(values)) / 2
            text = f"{mean:+.1%}" if column == "loss change, last 10%" else f"{mean:.3g}" if "(M)" in column else f"{mean:.1f}"
            if len(values) > 1 and "(M)" not in column:
                text += f" ±{spread:.1%}" if column == "loss change, last 10%" else f" ±{spread:.1f}"
            if stock and name != STOCK and column in ratio_columns:
                text += f" ({mean / statistics.mean(r[column] for r in stock):.2f}x)"
            cells.append(text)
        lines.append(f"| {name} | {len(runs)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def time_mask_branches(configs: dict[str, Path], split: str, args: argparse.Namespace) -> dict[str, float]:
    """Median ms of the mask branch (pooling, mask head, rescoring) for ``--rois`` boxes on one image.

    Heads are timed in interleaved rounds inside one process, so load from other jobs hits them alike.
    """
    torch.manual_seed(0)
    models, features, sizes = {}, {}, {}
    for name, config in configs.items():
        cfg = build_cfg(config, split, 0, args, args.out / split / name)
        model = build_model(cfg).eval()
        size = sizes[name] = cfg.INPUT.MIN_SIZE_TEST
        shapes = model.backbone.output_shape()
        models[name] = model
        features[name] = {f: torch.randn(1, s.channels, size // s.stride, size // s.stride) for f, s in shapes.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for _ in tqdm(range(args.timing_rounds), desc="timing mask branches", unit="round"):
            for name, model in models.items():
                size = sizes[name]
                xy = torch.rand(args.rois, 2) * (size * 3 / 4)
                boxes = Boxes(torch.cat([xy, xy + size / 16 + torch.rand(args.rois, 2) * size / 4], dim=1))
                detections = Instances((size, size), pred_boxes=boxes, scores=torch.ones(args.rois))
                detections.pred_classes = torch.arange(args.rois) % model.roi_heads.num_classes
                start = time.perf_counter()
                model.roi_heads._forward_mask(features[name], [detections])
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t[1:]) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=sorted(SPLITS), default="boundary")
    parser.add_argument("--iters", type=int, default=1500, help="training iterations per head and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("output/bench_heads"))
    parser.add_argument("--heads", nargs="*", help=f"subset to run (default: all); '{STOCK}' is the baseline")
    parser.add_argument(
        "--weights",
        default="",
        help="start every head from this stock checkpoint (shared layers load, new ones start fresh); "
        "default: train from scratch",
    )
    parser.add_argument("--timing-images", type=int, default=20, help="test images timed per run")
    parser.add_argument("--rerun", action="store_true", help="retrain runs that already have a result.json")
    parser.add_argument("--table-only", action="store_true", help="print the table from saved results")
    parser.add_argument("--rois", type=int, default=50, help="boxes per image for the mask-branch timing")
    parser.add_argument("--timing-rounds", type=int, default=30, help="interleaved rounds of mask-branch timing")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides applied to every head")
    args = parser.parse_args()
    setup_logger(name="bench_heads")

    configs = head_configs()
    names = args.heads or list(configs)
    unknown = sorted(set(names) - set(configs))
    if unknown:
        parser.error(f"unknown heads {unknown}; choose from {sorted(configs)}")
    results: dict[str, list[dict]] = {}
    for name in names:
        for seed in args.seeds:
            saved = args.out / args.split / name / f"seed{seed}" / "result.json"
            if saved.is_file() and (args.table_only or not args.rerun):
                results.setdefault(name, []).append(json.loads(saved.read_text()))
            elif args.table_only:
                logger.warning("%s seed %d: no saved result at %s", name, seed, saved)
            else:
                logger.info("%s seed %d: training %d iterations on the %s split", name, seed, args.iters, args.split)
                results.setdefault(name, []).append(run_head(name, configs[name], args.split, seed, args))
    schedules = sorted({f"{r['iters']} iterations from {r['init']}" for runs in results.values() for r in runs})
    print(f"\n{run_header()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"Heads on the {args.split} split, {'; '.join(schedules)}, seeds {args.seeds}")
    print(format_table(results))
    if args.timing_rounds and not args.table_only:
        branch_ms = time_mask_branches({name: configs[name] for name in names}, args.split, args)
        stock_ms = branch_ms.get(STOCK)
        print(f"\nMask branch only ({args.rois} boxes, one test-size image, median of {args.timing_rounds} interleaved rounds)")
        print("| head | mask branch ms | vs stock |\n| --- | ---: | ---: |")
        for name, ms in branch_ms.items():
            print(f"| {name} | {ms:.1f} | {f'{ms / stock_ms:.2f}x' if stock_ms else '-'} |")


if __name__ == "__main__":
    main()
