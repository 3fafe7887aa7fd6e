"""End-to-end Mask R-CNN speed: stock Detectron2 float32 vs the plugin's configurations, in one run.

For each configuration (same random weights everywhere) it times
  * inference: batch 1, 100 detections through the mask head (score threshold 0, no class NMS
    suppression, so random weights give 100), masks pasted;
  * a training iteration: forward, backward and SGD step (learning rate 0), 512 sampled ROIs per image
    (the SOLVER.AMP row: stock's model under the AMP training loop's autocast, training only);
with a per-stage breakdown (backbone+FPN, RPN, box head, mask head, mask targets, paste, NMS; stages
that contain others say so). Rounds visit the configurations in turn, so a noisy neighbour slows all
rows alike; the ratios are against the first row of the same run.

    python benchmarks/bench_e2e.py                       # COCO R50-FPN, 800x1216, CPU
    python benchmarks/bench_e2e.py --model demo          # the demo config (R18-GN, 256 px)
    python benchmarks/bench_e2e.py --profile             # + where the fastest row still converts tensors
    python benchmarks/bench_e2e.py --device cuda --quick
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from machine import run_header

import d2_maskext
from d2_maskext.modeling.precision import amp_autocast_dtype

MODELS = {
    "r50": ("configs/coco/mask_rcnn_R_50_FPN_1x.yaml", (800, 1216), 2),
    "demo": ("configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml", (256, 256), 4),
}


@dataclass(frozen=True)
class Setting:
    label: str
    overrides: tuple = ()
    amp: bool = False  # the SOLVER.AMP.ENABLED training loop's autocast around the model (training only)


def settings_for(device: str) -> list[Setting]:
    fused = ("MODEL.ROI_HEADS.NAME", "MaskExtROIHeads", "MODEL.MASKEXT.POOLER", "fused")
    plugin = (*fused, "MODEL.META_ARCHITECTURE", "MaskExtRCNN")
    low = "bfloat16" if device == "cpu" else "float16"
    stock = ("MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.MASKEXT.POOLER", "stock")
    amp_dtype = amp_autocast_dtype(device)
    amp_label = f"{str(amp_dtype).replace('torch.', '')} autocast" if amp_dtype else "runs float32 on this CPU"
    return [
        Setting("stock Detectron2 (fp32)", stock),
        Setting(f"stock + SOLVER.AMP loop ({amp_label})", stock, amp=True),
        Setting("plugin fused pooler (fp32)", fused),
        Setting("fused + channels_last (fp32)", (*plugin, "MODEL.MASKEXT.CHANNELS_LAST", True)),
        Setting(f"fused + {low}", (*plugin, "MODEL.MASKEXT.PRECISION", low)),
        Setting(
            f"fused + {low} + channels_last",
            (*plugin, "MODEL.MASKEXT.PRECISION", low, "MODEL.MASKEXT.CHANNELS_LAST", True),
        ),
    ]


def build_cfg(config_file: str, device: str, overrides: tuple) -> CfgNode:
    cfg = d2_maskext.add_maskext_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(
        [
            "MODEL.WEIGHTS", "", "MODEL.DEVICE", device, "MODEL.META_ARCHITECTURE", "GeneralizedRCNN",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "MODEL.ROI_HEADS.NMS_THRESH_TEST", 1.0,
            "TEST.DETECTIONS_PER_IMAGE", 100,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 512, "SOLVER.AMP.ENABLED", False,
            *overrides,
        ]
    )
    return cfg


class StageTimer:
    """Wall time per stage, from hooks on the model's modules and wrappers around Detectron2's functions."""

    FUNCTIONS = (  # (owner, attribute, stage): every place a stage's function is looked up from
        ("detectron2.modeling.proposal_generator.proposal_utils", "batched_nms", "NMS"),
        ("detectron2.modeling.roi_heads.fast_rcnn", "batched_nms", "NMS"),
        ("detectron2.structures.masks:ROIMasks", "to_bitmasks", "paste masks"),
        ("d2_maskext.modeling.meta_arch", "paste_masks", "paste masks"),
        ("detectron2.structures.masks:PolygonMasks", "crop_and_resize", "mask targets"),
        ("detectron2.structures.masks:BitMasks", "crop_and_resize", "mask targets"),
    )
    STAGES = ("backbone+FPN", "RPN (incl. NMS)", "box head (incl. NMS)", "mask head (incl. targets)",
              "mask targets", "paste masks", "NMS")

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.enabled = False

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] += time.perf_counter() - start

    def _wrap(self, fn: Callable, name: str) -> Callable:
        def timed(*args, **kwargs):
            with self.stage(name):
                return fn(*args, **kwargs)

        return timed

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Route the functions in ``FUNCTIONS`` through this timer while the context is open."""
        undo = []
        for path, attr, name in self.FUNCTIONS:
            module_name, _, class_name = path.partition(":")
            owner = importlib.import_module(module_name)
            if class_name:
                owner = getattr(owner, class_name)
            original = owner.__dict__[attr]
            setattr(owner, attr, self._wrap(original, name))
            undo.append((owner, attr, original))
        try:
            yield
        finally:
            for owner, attr, original in undo:
                setattr(owner, attr, original)

    def instrument(self, model: torch.nn.Module) -> None:
        model.backbone.forward = self._wrap(model.backbone.forward, "backbone+FPN")
        model.proposal_generator.forward = self._wrap(model.proposal_generator.forward, "RPN (incl. NMS)")
        heads = model.roi_heads
        heads._forward_box = self._wrap(heads._forward_box, "box head (incl. NMS)")
        heads._forward_mask = self._wrap(heads._forward_mask, "mask head (incl. targets)")


@dataclass
class Row:
    setting: Setting
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    timer: StageTimer
    infer: list[float] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    detections: int = 0


def make_image(size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A smooth random BGR image (0-255): low-frequency noise upsampled, like natural image statistics."""
    coarse = torch.rand(1, 3, size[0] // 32, size[1] // 32, generator=generator) * 255
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0]


def make_instances(size: tuple[int, int], num: int, num_classes: int, generator: torch.Generator) -> Instances:
    """``num`` polygon instances (octagons) of log-uniform size, as COCO's polygon masks arrive."""
    height, width = size
    side = torch.exp(torch.empty(num).uniform_(3.0, 5.8, generator=generator)).clamp(max=min(size) / 2)
    cx = side + torch.rand(num, generator=generator) * (width - 2 * side)
    cy = side + torch.rand(num, generator=generator) * (height - 2 * side)
    angles = torch.arange(8) * (2 * torch.pi / 8)
    polygons, boxes = [], []
    for x, y, s in zip(cx.tolist(), cy.tolist(), side.tolist()):
        xs, ys = x + s / 2 * torch.cos(angles), y + s / 2 * torch.sin(angles)
        polygons.append([torch.stack([xs, ys], 1).flatten().tolist()])
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    instances = Instances(size)
    instances.gt_boxes = Boxes(torch.tensor(boxes))
    instances.gt_classes = torch.randint(num_classes, (num,), generator=generator)
    instances.gt_masks = PolygonMasks(polygons)
    return instances


def measure(args: argparse.Namespace) -> None:
    config_file, size, batch = MODELS[args.model]
    device = args.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    image = make_image(size, generator).to(device)
    num_classes = build_cfg(config_file, device, ()).MODEL.ROI_HEADS.NUM_CLASSES
    train_batch = [
        {"image": make_image(size, generator).to(device), "instances": make_instances(size, 15, num_classes, generator)}
        for _ in range(batch)
    ]
    rows: list[Row] = []
    state = None
    for setting in settings_for(device):
        cfg = build_cfg(config_file, device, setting.overrides)
        torch.manual_seed(0)
        model = build_model(cfg)
        if state is None:
            # Zero box deltas keep the random model's boxes on its proposals, and zero class logits give every
            # (proposal, class) pair the same score: 100 non-empty detections in every row, whatever the precision.
            torch.nn.init.zeros_(model.roi_heads.box_predictor.bbox_pred.weight)
            torch.nn.init.zeros_(model.roi_heads.box_predictor.cls_score.weight)
            state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        timer = StageTimer(sync)
        timer.instrument(model)
        # A real SGD step whose learning rate is 0: the weights (random) stay where they are, so every round
        # times the same model instead of one that drifts towards NaNs.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
        rows.append(Row(setting, model, optimizer, timer))

    def infer(row: Row) -> float:
        row.model.eval()
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            out = row.model([{"image": image, "height": size[0], "width": size[1]}])
        sync()
        row.detections = len(out[0]["instances"])
        return time.perf_counter() - start

    def train(row: Row) -> float:
        row.model.train()
        amp_dtype = amp_autocast_dtype(device) if row.setting.amp else None
        autocast = torch.autocast(device, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        sync()
        start = time.perf_counter()
        with autocast:  # as Detectron2's AMPTrainer and the plugin's CPUAutocastTrainer (no gradient scaler here)
            losses = row.model(train_batch)
        total = sum(losses.values())
        row.optimizer.zero_grad()
        total.backward()
        row.optimizer.step()
        sync()
        return time.perf_counter() - start

    def rounds(name: str, step: Callable[[Row], float], warmup: int, iters: int) -> None:
        """``warmup + iters`` rounds over every row; the timed ones append to ``row.<name>`` and the stages."""
        for round_index in range(warmup + iters):
            for row in rows:
                if name == "infer" and row.setting.amp:
                    continue  # the AMP loop autocasts training only; its inference is stock's
                row.timer.enabled = round_index >= warmup
                with row.timer.patched():
                    seconds = step(row)
                if round_index >= warmup:
                    getattr(row, name).append(seconds)
            print(f"  {name} round {round_index + 1}/{warmup + iters} done", flush=True)

    with EventStorage(0):
        rounds("infer", infer, args.warmup, args.iters)
        infer_stages = {id(row): dict(row.timer.seconds) for row in rows}
        for row in rows:
            row.timer.seconds.clear()
        if not args.skip_training:
            rounds("train", train, args.train_warmup, args.train_iters)

    report(args, rows, infer_stages, size, batch)
    if args.profile:
        profile(rows[-1], image, size, train_batch, args.skip_training)


def report(args: argparse.Namespace, rows: list[Row], infer_stages: dict, size: tuple[int, int], batch: int) -> None:
    base = rows[0]
    print(f"\n{run_header()}")
    print(
        f"{args.model} at {size[0]}x{size[1]}, device {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; medians of {args.iters} inference / {args.train_iters} training rounds"
    )
    print(f"\n| configuration | inference s/img | vs stock | training s/iter (batch {batch}) | vs stock | detections |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        if row.infer:
            inf = statistics.median(row.infer)
            infer_cells = f"{inf:.3f} | {statistics.median(base.infer) / inf:.2f}x"
        else:
            infer_cells = "as stock | —"
        if row.train:
            tr = statistics.median(row.train)
            train_cells = f"{tr:.3f} | {statistics.median(base.train) / tr:.2f}x"
        else:
            train_cells = "— | —"
        print(f"| {row.setting.label} | {infer_cells} | {train_cells} | {row.detections or '—'} |")
    for title, stages_of, count, shown in (
        ("inference", lambda r: infer_stages[id(r)], args.iters, [r for r in rows if r.infer]),
        ("training forward", lambda r: r.timer.seconds, args.train_iters, rows),
    ):
        if title.startswith("training") and args.skip_training:
            continue
        print(f"\nPer-stage {title} time, ms per iteration (stages in parentheses contain the ones below them):")
        print("| stage | " + " | ".join(r.setting.label for r in shown) + " |")
        print("|---|" + "---:|" * len(shown))
        for stage in StageTimer.STAGES:
            cells = [f"{1000 * stages_of(r).get(stage, 0.0) / count:.1f}" for r in shown]
            print(f"| {stage} | " + " | ".join(cells) + " |")


def profile(row: Row, image: torch.Tensor, size: tuple[int, int], train_batch: list, skip_training: bool) -> None:
    """Top operators, and every dtype/memory-format conversion left, in one iteration of ``row``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    conversions = ("aten::to", "aten::_to_copy", "aten::copy_", "aten::contiguous", "aten::clone")

    def inference() -> None:
        row.model.eval()
        with torch.no_grad():
            row.model([{"image": image, "height": size[0], "width": size[1]}])

    def training() -> None:
        row.model.train()
        with EventStorage(0):
            sum(row.model(train_batch).values()).backward()

    steps = [("inference", inference)] + ([] if skip_training else [("training", training)])
    for name, step in steps:
        step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        print(f"\nProfile of one {name} iteration, {row.setting.label}: top operators by self time")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]:
            share = 100 * e.self_cpu_time_total / total
            print(f"  {e.key:<50} {e.self_cpu_time_total / 1000:9.1f} ms  ({share:4.1f}%)  {e.count} calls")
        print("  conversions (dtype/memory-format copies):")
        for e in events:
            if e.key in conversions:
                print(f"  {e.key:<50} {e.self_cpu_time_total / 1000:9.1f} ms self, {e.count} calls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="r50")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=3, help="timed inference rounds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--train-iters", type=int, default=3)
    parser.add_argument("--train-warmup", type=int, default=1)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 timed rounds, 1 warm-up")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.iters = args.train_iters = 2
        args.warmup = args.train_warmup = 1
    measure(args)


if __name__ == "__main__":
    main()
