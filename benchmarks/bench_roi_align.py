"""RoIAlign benchmark: d2_maskext's op and fused pooler vs torchvision's roi_align and Detectron2's ROIPooler.

Cases (FPN P2-P5 of an 800x1216 image, 256 channels, sampling_ratio 0, aligned):
  (a) box-head inference: 1000 boxes, 7x7, forward only;
  (b) mask-head training: 512 boxes, 14x14, forward + backward.
Each case is timed for the multi-level poolers (ROIPooler vs FusedROIPooler) and, on P2 alone, for the
single-level ops (torchvision.ops.roi_align vs d2_maskext roi_align). Optionally also a whole training
iteration of the demo config with MODEL.MASKEXT.POOLER stock vs fused (same seed, same batches).

    python benchmarks/bench_roi_align.py                  # CPU table + training iterations
    python benchmarks/bench_roi_align.py --device cuda --skip-training
    python benchmarks/bench_roi_align.py --threads 1 --skip-training   # single-threaded, like torchvision's kernel
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torchvision.ops import roi_align as tv_roi_align

from d2_maskext.layers import HAS_C_EXT, FusedROIPooler, roi_align

IMAGE_HEIGHT, IMAGE_WIDTH, CHANNELS = 800, 1216, 256
SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


@dataclass(frozen=True)
class Case:
    name: str
    num_boxes: int
    output_size: int
    backward: bool


CASES = [
    Case("(a) box head, inference: 1000 boxes, 7x7, fwd", 1000, 7, False),
    Case("(b) mask head, training: 512 boxes, 14x14, fwd+bwd", 512, 14, True),
]


def proposal_boxes(num: int, generator: torch.Generator) -> Boxes:
    """Proposal-like boxes: side lengths log-uniform in [16, 640] px, aspect ratio in [1/2, 2], clipped."""
    area_side = torch.exp(torch.empty(num).uniform_(2.77, 6.46, generator=generator))
    aspect = torch.exp(torch.empty(num).uniform_(-0.69, 0.69, generator=generator))
    w, h = area_side * aspect.sqrt(), area_side / aspect.sqrt()
    cx = torch.rand(num, generator=generator) * IMAGE_WIDTH
    cy = torch.rand(num, generator=generator) * IMAGE_HEIGHT
    boxes = Boxes(torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1))
    boxes.clip((IMAGE_HEIGHT, IMAGE_WIDTH))
    return boxes


def median_seconds(fn: Callable[[], object], sync: Callable[[], None], min_time: float) -> float:
    """Median time per call; the first call warms up unless it alone exceeds ``min_time`` (slow baselines)."""
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    if first > min_time:
        return first
    samples: list[float] = []
    while len(samples) < 3 or (sum(samples) < min_time and len(samples) < 50):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def pooling_call(
    pool: Callable, features: list[torch.Tensor], grad: torch.Tensor | None
) -> Callable[[], object]:
    """Forward (``grad`` None, under no_grad) or forward + backward to the features."""
    if grad is None:

        def forward() -> object:
            with torch.no_grad():
                return pool(features)

        return forward
    leaves = [f.detach().requires_grad_(True) for f in features]

    def forward_backward() -> object:
        return torch.autograd.grad(pool(leaves), leaves, grad, allow_unused=True)

    return forward_backward


def bench_case(case: Case, features: list[torch.Tensor], g: torch.Generator, min_time: float) -> dict:
    device = features[0].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    boxes = [proposal_boxes(case.num_boxes, g).to(device)]
    rois = torch.cat([torch.zeros(case.num_boxes, 1, device=device), boxes[0].tensor], dim=1)
    size = case.output_size
    grad = (
        torch.randn(case.num_boxes, CHANNELS, size, size, generator=g).to(device) if case.backward else None
    )
    stock = ROIPooler(size, SCALES, 0, "ROIAlignV2").to(device)
    fused = FusedROIPooler.from_roi_pooler(stock)
    calls = {
        "torchvision roi_align (P2)": pooling_call(
            lambda x: tv_roi_align(x[0], rois, size, SCALES[0], 0, True), features[:1], grad
        ),
        "ours roi_align (P2)": pooling_call(
            lambda x: roi_align(x[0], rois, size, SCALES[0], 0, True), features[:1], grad
        ),
        "Detectron2 ROIPooler (P2-P5)": pooling_call(lambda x: stock(x, boxes), features, grad),
        "ours FusedROIPooler (P2-P5)": pooling_call(lambda x: fused(x, boxes), features, grad),
    }
    row: dict = {"case": case.name}
    for name, fn in calls.items():
        row[name] = median_seconds(fn, sync, min_time)
        print(f"  {case.name} | {name}: {row[name] * 1e3:.1f} ms", flush=True)
    return row


def bench_cases(device: torch.device, min_time: float) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    features = [
        torch.randn(1, CHANNELS, IMAGE_HEIGHT // int(1 / s), IMAGE_WIDTH // int(1 / s), generator=g).to(
            device
        )
        for s in SCALES
    ]
    return [bench_case(case, features, g, min_time) for case in CASES]


def print_case_table(rows: list[dict], device: torch.device) -> None:
    columns = [c for c in rows[0] if c != "case"]
    print(f"\nRoIAlign on {device} ({torch.get_num_threads()} threads), median ms per call")
    print("| case | " + " | ".join(columns) + " | fused vs ROIPooler | ours vs torchvision (P2) |")
    print("|---" * (len(columns) + 3) + "|")
    for row in rows:
        ms = " | ".join(f"{row[c] * 1e3:.1f}" for c in columns)
        fused_ratio = row["Detectron2 ROIPooler (P2-P5)"] / row["ours FusedROIPooler (P2-P5)"]
        op_ratio = row["torchvision roi_align (P2)"] / row["ours roi_align (P2)"]
        print(f"| {row['case']} | {ms} | {fused_ratio:.1f}x | {op_ratio:.1f}x |")


def bench_training(iterations: int, warmup: int) -> None:
    """Seconds per training iteration of the demo config, stock vs fused pooler, on identical batches."""
    from detectron2.config import get_cfg
    from detectron2.utils.events import EventStorage

    from d2_maskext import add_maskext_config
    from d2_maskext.engine.trainer import Trainer

    def config(pooler: str):
        cfg = add_maskext_config(get_cfg())
        cfg.merge_from_file("configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml")
        cfg.merge_from_list(["MODEL.MASKEXT.POOLER", pooler, "DATALOADER.NUM_WORKERS", "0"])
        return cfg

    cfg = config("stock")
    torch.manual_seed(cfg.SEED)
    loader = iter(Trainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(warmup + iterations)]
    results = {}
    for pooler in ("stock", "fused"):
        cfg = config(pooler)
        torch.manual_seed(cfg.SEED)
        model = Trainer.build_model(cfg)
        model.train()
        optimizer = Trainer.build_optimizer(cfg, model)
        times, losses = [], []
        with EventStorage(0):
            for i, batch in enumerate(batches):
                start = time.perf_counter()
                loss = sum(model(batch).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
                losses.append(float(loss))
        results[pooler] = (statistics.mean(times), losses[-1])
        print(
            f"  training, POOLER {pooler}: {results[pooler][0]:.3f} s/iter (last loss {losses[-1]:.4f})",
            flush=True,
        )
    print(
        f"\nDemo config training iteration ({cfg.SOLVER.IMS_PER_BATCH} images of 256 px, {iterations} timed "
        f"iterations after {warmup} warm-up, same seed and batches)"
    )
    print("| MODEL.MASKEXT.POOLER | s/iter | total loss at last iteration |")
    print("|---|---|---|")
    for pooler, (seconds, loss) in results.items():
        print(f"| {pooler} | {seconds:.3f} | {loss:.4f} |")
    print(f"| speed-up | {results['stock'][0] / results['fused'][0]:.2f}x | |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of repeated calls per timing")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--train-iters", type=int, default=5)
    parser.add_argument("--train-warmup", type=int, default=2)
    args = parser.parse_args()
    if not HAS_C_EXT:
        raise SystemExit("d2_maskext._C is not built; this benchmark measures the compiled op")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print_case_table(bench_cases(device, args.min_time), device)
    if not args.skip_training:
        bench_training(args.train_iters, args.train_warmup)


if __name__ == "__main__":
    main()
