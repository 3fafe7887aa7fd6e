"""Parity and latency of every export format against PyTorch eager, on a dataset split.

For each format (exported program, AOTInductor, TorchScript, ONNX in onnxruntime) it exports the model,
then on each image of the split (resized as at test time):
  * parity: detections of eager PyTorch matched one-to-one to the export's (same class, box IoU >= 0.99,
    |score difference| < 1e-3); the share matched must be at least 99%. The model is exported from an image
    of another size than the split's first, so parity covers sizes not seen at export;
  * accuracy: box and mask AP through the plugin's evaluator, full-image results made by the export
    runtime (``ExportedMaskRCNN.predict``) against eager Detectron2 post-processing (mask AP within 0.2);
  * latency: median time of one raw forward (model input to the four outputs), also for eager with the
    fast settings (``MaskExtRCNN``, channels-last, bfloat16).

    python benchmarks/bench_export.py --weights output/demo/model_final.pth            # demo, synthetic val
    python benchmarks/bench_export.py --weights w.pth --num-images 20 --formats exported_program onnx
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances, pairwise_iou
from torch import Tensor, nn

from d2_maskext.cli.config_loading import LoadedConfig, load_config
from d2_maskext.evaluation import build_evaluator
from d2_maskext.export import FORMATS, ExportedMaskRCNN, ExportRequest, InputRules, SharedGraphs, export_model
from d2_maskext.export.runtime import model_input, read_image

DEMO_CONFIG = "configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml"
FAST_SETTINGS = ("MODEL.META_ARCHITECTURE", "MaskExtRCNN", "MODEL.MASKEXT.CHANNELS_LAST", "True",
                 "MODEL.MASKEXT.PRECISION", "bfloat16")  # fmt: skip
# Exports run the network in float32 whatever the config's compute settings, so eager is compared in float32.
FLOAT32_SETTINGS = ("MODEL.MASKEXT.CHANNELS_LAST", "False", "MODEL.MASKEXT.PRECISION", "float32")
MIN_IOU, MAX_SCORE_DIFF, MIN_MATCHED, MAX_MASK_AP_DIFF = 0.99, 1e-3, 0.99, 0.2
Outputs = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass
class Row:
    label: str
    forward: Callable[[Tensor], Outputs]
    latencies: list[float] = field(default_factory=list)
    matched: int = 0
    reference_count: int = 0
    ap: dict[str, float] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEMO_CONFIG)
    parser.add_argument("--weights", required=True, help="trained weights (.pth)")
    parser.add_argument("--dataset", default=None, help="split to run on (default: the config's first test set)")
    parser.add_argument("--num-images", type=int, default=None, help="first N images of the split (default: all)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--output", default="output/bench_export", help="where the exports are written")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for every row (default: torch's; 1 on a shared CPU)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return parser.parse_args(argv)


def eager_forward(model: nn.Module) -> Callable[[Tensor], Outputs]:
    def forward(image: Tensor) -> Outputs:
        with torch.no_grad():
            instances = model.inference([{"image": image}], do_postprocess=False)[0]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes, instances.pred_masks

    return forward


def count_matched(reference: Outputs, got: Outputs) -> int:
    """Reference detections with a distinct partner of the same class, box IoU and score within bounds."""
    if len(reference[0]) == 0 or len(got[0]) == 0:
        return 0
    iou = pairwise_iou(Boxes(reference[0]), Boxes(got[0].float()))
    close = (
        (iou >= MIN_IOU)
        & ((reference[1][:, None] - got[1][None, :]).abs() < MAX_SCORE_DIFF)
        & (reference[2][:, None] == got[2][None, :].long())
    )
    taken: set[int] = set()
    for row in close:
        partners = [j for j in torch.nonzero(row).flatten().tolist() if j not in taken]
        if partners:
            taken.add(partners[0])
    return len(taken)


def full_image_instances(prediction) -> Instances:
    height, width = prediction.masks.shape[1:] if len(prediction.masks) else (0, 0)
    instances = Instances((height, width))
    instances.pred_boxes = Boxes(prediction.boxes)
    instances.scores = prediction.scores
    instances.pred_classes = prediction.classes
    instances.pred_masks = prediction.masks
    return instances


def evaluate(loaded: LoadedConfig, dataset: str, records: list[dict], outputs: list[Instances], folder: Path) -> dict:
    evaluator = build_evaluator(loaded.config, dataset, str(folder))
    evaluator.reset()
    for record, instances in zip(records, outputs):
        evaluator.process([record], [{"instances": instances}])
    results = evaluator.evaluate()
    return {task: float(results[task]["AP"]) for task in ("bbox", "segm") if task in results}


def measure(args: argparse.Namespace) -> tuple[list[Row], int]:
    loaded = load_config(args.config_file, ["MODEL.WEIGHTS", args.weights, *args.opts, *FLOAT32_SETTINGS])
    model = loaded.build_inference_model().to("cpu").float().eval()
    resize = loaded.test_resize()
    rules = InputRules.of(model, int(min(resize.short_edge_length)), int(resize.max_size))
    fast = load_config(args.config_file, ["MODEL.WEIGHTS", args.weights, *args.opts, *FAST_SETTINGS])
    rows = [Row("eager fp32", eager_forward(model)),
            Row("eager fast settings (channels_last + bfloat16)", eager_forward(fast.build_inference_model()))]  # fmt: skip
    dataset = args.dataset or loaded.test_dataset_name
    records = DatasetCatalog.get(dataset)[: args.num_images]
    images = [read_image(r["file_name"]) for r in records]
    inputs = [model_input(bgr, rules.min_size_test, rules.max_size_test) for bgr in images]
    # Exported from a size the split's first image does not have (padded by 32 and 64 pixels), so parity
    # covers sizes not seen at export even on a split whose images all share one size.
    sample = torch.nn.functional.pad(inputs[0], (0, 64, 0, 32))
    exported: dict[str, ExportedMaskRCNN] = {}
    shared = SharedGraphs()  # each graph traced once for all the formats
    for fmt in sorted(args.formats, key=FORMATS.index):
        request = ExportRequest(fmt, Path(args.output) / fmt, "tracing", loaded.class_names())
        path = export_model(model, sample, rules, request, shared)
        exported[fmt] = ExportedMaskRCNN(path, num_threads=args.threads)
        rows.append(Row(fmt, exported[fmt]))
    for row in rows:  # warm-up (first calls compile or allocate)
        row.forward(inputs[0])
    for image in inputs:
        reference = rows[0].forward(image)
        for row in rows:
            start = time.perf_counter()
            got = row.forward(image)
            row.latencies.append(time.perf_counter() - start)
            row.reference_count += len(reference[0])
            row.matched += count_matched(reference, got)
    with torch.no_grad():
        eager = [model([{"image": x, "height": b.shape[0], "width": b.shape[1]}])[0]["instances"]
                 for x, b in zip(inputs, images)]  # fmt: skip
    rows[0].ap = evaluate(loaded, dataset, records, eager, Path(args.output) / "eval_eager")
    for row in rows[2:]:
        predictions = [full_image_instances(exported[row.label].predict(bgr)) for bgr in images]
        row.ap = evaluate(loaded, dataset, records, predictions, Path(args.output) / f"eval_{row.label}")
    return rows, len(inputs)


def report(rows: list[Row], num_images: int) -> None:
    print(f"\n{num_images} images, {torch.get_num_threads()} threads; matched: box IoU >= {MIN_IOU}, |score diff| < {MAX_SCORE_DIFF}, same class\n")
    print("| model | median latency (ms) | vs eager fp32 | detections matched | box AP | mask AP |")
    print("|---|---:|---:|---:|---:|---:|")
    base = statistics.median(rows[0].latencies)
    for row in rows:
        latency = statistics.median(row.latencies)
        share = row.matched / row.reference_count if row.reference_count else 1.0
        box_ap, mask_ap = (f"{row.ap[k]:.2f}" if k in row.ap else "-" for k in ("bbox", "segm"))
        print(f"| {row.label} | {latency * 1e3:.1f} | {base / latency:.2f}x | {share:.2%} | {box_ap} | {mask_ap} |")
    failing = [r.label for r in rows[2:] if r.reference_count and r.matched / r.reference_count < MIN_MATCHED]
    eager_mask_ap = rows[0].ap.get("segm")
    failing += [
        f"{r.label} (mask AP)"
        for r in rows[2:]
        if eager_mask_ap is not None and abs(r.ap.get("segm", eager_mask_ap) - eager_mask_ap) > MAX_MASK_AP_DIFF
    ]
    if failing:
        raise SystemExit(
            f"parity below {MIN_MATCHED:.0%} matched or mask AP off by more than {MAX_MASK_AP_DIFF}: {', '.join(failing)}"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows, num_images = measure(args)
    report(rows, num_images)


if __name__ == "__main__":
    main()
