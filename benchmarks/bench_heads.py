#!/usr/bin/env python
"""Train every head variant and the stock heads with one seed and schedule, then compare them.

For each config in ``configs/synthetic/variants`` plus the stock base config: train ``--iters``
iterations on ``maskext_synth_train`` (from scratch, or from a stock checkpoint with ``--weights``),
evaluate COCO box/mask/Boundary AP on ``maskext_synth_val`` and time inference image by image. Prints box AP, mask AP, mask AP75,
Boundary AP, training s/iter (median),
inference ms/image (median), parameter counts, and ratios to stock. Each variant's numbers are saved
to ``<out>/<variant>/result.json``, so an interrupted run resumes where it stopped.

    python benchmarks/bench_heads.py --iters 300 --out output/bench_heads
    python benchmarks/bench_heads.py --iters 150 --weights output/demo/model_final.pth --out output/bench_heads_ft
    python benchmarks/bench_heads.py --out output/bench_heads --table-only
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from d2_maskext.config import add_maskext_config
from d2_maskext.data.mappers import build_mapper
from d2_maskext.engine import Trainer
from d2_maskext.evaluation.coco_evaluator import MaskExtCOCOEvaluator

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
STOCK = "stock"
logger = logging.getLogger("bench_heads")


def variant_configs() -> dict[str, Path]:
    variants = {STOCK: CONFIGS / "Base-Synthetic-R18-GN.yaml"}
    variants.update((p.stem, p) for p in sorted((CONFIGS / "variants").glob("*.yaml")))
    return variants


def build_cfg(config: Path, args: argparse.Namespace, output_dir: Path) -> CfgNode:
    """The variant's config on the shared schedule: same seed, iterations, LR steps and batch for all."""
    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(config))
    cfg.merge_from_list(args.opts)
    cfg.SEED = args.seed
    cfg.SOLVER.MAX_ITER = args.iters
    cfg.SOLVER.STEPS = tuple(sorted({int(args.iters * 0.75), int(args.iters * 0.9)} - {0}))
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, args.iters // 4)
    cfg.SOLVER.CHECKPOINT_PERIOD = args.iters + 1  # only the final model is saved
    cfg.TEST.EVAL_PERIOD = 0
    cfg.MODEL.WEIGHTS = args.weights
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.freeze()
    return cfg


def evaluate_and_time(cfg: CfgNode, model: torch.nn.Module, output_dir: Path, max_images: int) -> dict:
    """COCO AP on the test set and per-image inference time (model forward only, batch of one)."""
    dataset = cfg.DATASETS.TEST[0]
    DatasetCatalog.get(dataset)  # generated before the evaluator reads its JSON
    loader = build_detection_test_loader(cfg, dataset, mapper=build_mapper(cfg, is_train=False))
    evaluator = MaskExtCOCOEvaluator(dataset, tasks=("bbox", "segm"), distributed=False, output_dir=str(output_dir))
    evaluator.reset()
    times = []
    model.eval()
    with torch.no_grad():
        for index, inputs in enumerate(tqdm(loader, desc="evaluating", unit="img", total=len(loader))):
            if max_images and index >= max_images:
                break
            start = time.perf_counter()
            outputs = model(inputs)
            times.append(time.perf_counter() - start)
            evaluator.process(inputs, outputs)
    metrics = evaluator.evaluate()
    return {
        "box_AP": metrics["bbox"]["AP"],
        "mask_AP": metrics["segm"]["AP"],
        "mask_AP75": metrics["segm"]["AP75"],
        "boundary_AP": metrics["boundary"]["AP"],
        "infer_ms_per_image": 1000 * statistics.median(times[1:] or times),
        "eval_images": len(times),
    }


def run_variant(name: str, config: Path, args: argparse.Namespace) -> dict:
    output_dir = args.out / name
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(str(output_dir / "log.txt"), name="d2_maskext")
    cfg = build_cfg(config, args, output_dir)
    torch.manual_seed(args.seed)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    step_times = [t for t, _ in trainer.storage.history("time").values()]  # IterationTimer skips warm-up
    result = {
        "variant": name,
        "config": str(config.relative_to(CONFIGS.parent.parent)),
        "iters": args.iters,
        "init": args.weights or "scratch",
        "train_s_per_iter": statistics.median(step_times),
        "params_M": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
        "roi_heads_params_M": sum(p.numel() for p in trainer.model.roi_heads.parameters()) / 1e6,
        "mask_head_params_M": sum(p.numel() for p in trainer.model.roi_heads.mask_head.parameters()) / 1e6,
    }
    result.update(evaluate_and_time(cfg, trainer.model, output_dir / "inference", args.eval_images))
    (output_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def time_mask_branches(configs: dict[str, Path], args: argparse.Namespace) -> dict[str, float]:
    """Median ms of the mask branch (pooling, mask head, rescoring) for ``--rois`` boxes on one image.

    Variants are timed in interleaved rounds inside one process, so load from other jobs hits them alike.
    """
    torch.manual_seed(args.seed)
    size = 256
    models, features = {}, {}
    for name, config in configs.items():
        cfg = build_cfg(config, args, args.out / name)
        model = build_model(cfg).eval()
        models[name] = model
        shapes = model.backbone.output_shape()
        features[name] = {
            f: torch.randn(1, shapes[f].channels, size // shapes[f].stride, size // shapes[f].stride)
            for f in cfg.MODEL.ROI_HEADS.IN_FEATURES
        }
    xy = torch.rand(args.rois, 2) * (size - 64)
    boxes = Boxes(torch.cat([xy, xy + 16 + torch.rand(args.rois, 2) * 48], dim=1))
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for _ in tqdm(range(args.timing_rounds), desc="timing mask branches", unit="round"):
            for name, model in models.items():
                detections = Instances((size, size), pred_boxes=boxes, scores=torch.ones(args.rois))
                detections.pred_classes = torch.arange(args.rois) % model.roi_heads.num_classes
                start = time.perf_counter()
                model.roi_heads._forward_mask(features[name], [detections])
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t[1:]) for name, t in times.items()}


def format_table(results: list[dict]) -> str:
    """Markdown table; ratios are relative to the stock heads measured in the same run."""
    stock = next((r for r in results if r["variant"] == STOCK), None)
    lines = [
        "| variant | box AP | mask AP | mask AP75 | boundary AP | train s/iter | infer ms/img | params (M) | ROI heads (M) | mask head (M) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        def ratio(key: str, r: dict = r) -> str:
            return f" ({r[key] / stock[key]:.2f}x)" if stock and r is not stock and stock[key] else ""

        boundary = f"{r['boundary_AP']:.1f}" if "boundary_AP" in r else "n/a"  # results saved before Boundary AP
        lines.append(
            f"| {r['variant']} | {r['box_AP']:.1f} | {r['mask_AP']:.1f} | {r['mask_AP75']:.1f} | {boundary} "
            f"| {r['train_s_per_iter']:.2f}{ratio('train_s_per_iter')} | {r['infer_ms_per_image']:.0f}{ratio('infer_ms_per_image')} "
            f"| {r['params_M']:.2f} | {r['roi_heads_params_M']:.2f} | {r['mask_head_params_M']:.3f}{ratio('mask_head_params_M')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300, help="training iterations per variant")
    parser.add_argument("--out", type=Path, default=Path("output/bench_heads"))
    parser.add_argument("--variants", nargs="*", help=f"subset to run (default: all); '{STOCK}' is the baseline")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--weights",
        default="",
        help="start every variant from this stock checkpoint (shared layers load, new ones start fresh); "
        "default: train from scratch",
    )
    parser.add_argument("--eval-images", type=int, default=0, help="evaluate on the first N images (0 = all)")
    parser.add_argument("--rerun", action="store_true", help="retrain variants that already have a result.json")
    parser.add_argument("--table-only", action="store_true", help="print the table from saved results")
    parser.add_argument("--rois", type=int, default=50, help="boxes per image for the mask-branch timing")
    parser.add_argument("--timing-rounds", type=int, default=30, help="interleaved rounds of mask-branch timing")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides applied to every variant")
    args = parser.parse_args()
    setup_logger(name="bench_heads")

    configs = variant_configs()
    names = args.variants or list(configs)
    unknown = sorted(set(names) - set(configs))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(configs)}")
    results = []
    for name in names:
        saved = args.out / name / "result.json"
        if saved.is_file() and (args.table_only or not args.rerun):
            results.append(json.loads(saved.read_text()))
            logger.info("%s: using saved result %s", name, saved)
        elif args.table_only:
            logger.warning("%s: no saved result at %s", name, saved)
        else:
            logger.info("%s: training %d iterations", name, args.iters)
            results.append(run_variant(name, configs[name], args))
            logger.info("%s: %s", name, results[-1])
    schedules = sorted({f"{r['iters']} iterations from {r['init']}" for r in results})
    print(f"\nHead variants, {'; '.join(schedules)}, seed {args.seed} (CPU, {torch.get_num_threads()} threads)")
    print(format_table(results))
    if args.timing_rounds:
        branch_ms = time_mask_branches({name: configs[name] for name in names}, args)
        stock_ms = branch_ms.get(STOCK)
        print(f"\nMask branch only ({args.rois} boxes, 256x256 image, median of {args.timing_rounds} interleaved rounds)")
        print("| variant | mask branch ms | vs stock |\n| --- | ---: | ---: |")
        for name, ms in branch_ms.items():
            print(f"| {name} | {ms:.1f} | {f'{ms / stock_ms:.2f}x' if stock_ms else '-'} |")


if __name__ == "__main__":
    main()
