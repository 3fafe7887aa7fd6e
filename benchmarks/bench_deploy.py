"""Accuracy and CPU latency of every deployment runtime, on the trained demo model and its val split, or
(``--model r50``) latency on COCO R50-FPN at 800x1216 with random weights.

Rows: stock Detectron2 eager float32, plugin eager float32, plugin eager fast settings (bfloat16 +
channels-last), TorchScript, AOTInductor, onnxruntime float32 and INT8, OpenVINO float32, bfloat16 (where the
CPU computes in it) and INT8. Each row is timed from
the uint8 image to full-image detections (resize, network, box scaling, mask pasting: what a deployer waits
for), median over the images, at each thread count; box and mask AP come from the first thread count's
detections through the plugin's evaluator. INT8 models are calibrated on ``--calibration-dataset`` as
``tools/export_model.py --quantize int8`` does. Other jobs on a shared CPU move absolute times: compare the
ratios within one run.

    python benchmarks/bench_deploy.py                          # demo model, 150 val images, 1 and 2 threads
    python benchmarks/bench_deploy.py --images 20 --threads 1  # a quick run
    python benchmarks/bench_deploy.py --rows "onnxruntime INT8" "OpenVINO INT8" --keep-float   # all layers INT8
    python benchmarks/bench_deploy.py --model r50 --images 3   # R50-FPN latency, random weights and images

For R50-FPN the box predictor is zeroed and the score threshold is 0, as in bench_e2e.py: random weights would
score every detection below the threshold, and the mask head and pasting would then never run. Every image
then has TEST.DETECTIONS_PER_IMAGE (100) detections. No AP is given for random weights.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from bench_export import DEMO_CONFIG, FAST_SETTINGS, FLOAT32_SETTINGS, evaluate, full_image_instances
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances
from machine import run_header
from torch import nn

from d2_maskext.cli.config_loading import LoadedConfig, load_config
from d2_maskext.export import ExportedMaskRCNN, ExportRequest, InputRules, SharedGraphs, export_model
from d2_maskext.export.quantization import (
    QUANTIZED_FORMATS,
    QuantizationRequest,
    calibration_images,
    quantize_export,
)
from d2_maskext.export.runtime import model_input, read_image

DEMO_WEIGHTS = "output/demo/model_final.pth"
R50_CONFIG, R50_SIZE, R50_DATASET = "configs/coco/mask_rcnn_R_50_FPN_1x_fused_pooler.yaml", (800, 1216), "bench_deploy_random_r50"
R50_OPTS = ("MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
R50_FAST_CONFIG = "configs/coco/mask_rcnn_R_50_FPN_1x_cpu_fast.yaml"  # the fused pooler too
STOCK_SETTINGS = ("MODEL.META_ARCHITECTURE", "GeneralizedRCNN", "MODEL.ROI_HEADS.NAME", "StandardROIHeads",
                  "MODEL.MASKEXT.POOLER", "stock")  # fmt: skip
EXPORTED = ("torchscript", "aoti", "onnx", "openvino")
Predict = Callable[[np.ndarray], Instances]


@dataclass
class Runtime:
    """A table row: ``load(threads)`` gives the function from a BGR image to full-image instances."""

    label: str
    load: Callable[[int], Predict]
    baseline: str  # the row this one's speed-up is given against
    latencies: dict[int, float] = field(default_factory=dict)
    ap: dict[str, float] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("demo", "r50"), default="demo", help="r50: random weights, latency only")
    parser.add_argument("--config-file", default=DEMO_CONFIG)
    parser.add_argument("--weights", default=DEMO_WEIGHTS)
    parser.add_argument("--dataset", default="maskext_synth_val")
    parser.add_argument("--images", type=int, default=None, help="first N images of the split (default: all)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--calibration-dataset", default="maskext_synth_train")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument(
        "--keep-float", nargs="*", default=None, metavar="PREFIX",
        help="module prefixes kept float in both INT8 models (default: each format's KEEP_FLOAT)",
    )  # fmt: skip
    parser.add_argument("--rows", nargs="+", default=None, metavar="LABEL", help="only these rows (default: all)")
    parser.add_argument(
        "--formats", nargs="+", default=list(EXPORTED), choices=EXPORTED, help="export these (default: all)"
    )
    parser.add_argument("--output", default="output/bench_deploy", help="where exports and evaluations go")
    return parser.parse_args(argv)


def prepare_random_r50(args: argparse.Namespace) -> None:
    """Seeded random R50-FPN weights with a zero box predictor, and ``args.images`` (default 3) random
    800x1216 images registered as a dataset (timing and calibration); points ``args`` at them."""
    folder = Path(args.output) / "random_r50"
    folder.mkdir(parents=True, exist_ok=True)
    loaded = load_config(R50_CONFIG, ["MODEL.WEIGHTS", "", *R50_OPTS, *STOCK_SETTINGS])
    torch.manual_seed(0)
    model = build_model(loaded.config)
    for layer in (model.roi_heads.box_predictor.cls_score, model.roi_heads.box_predictor.bbox_pred):
        torch.nn.init.zeros_(layer.weight)
    args.weights = str(folder / "model.pth")
    torch.save({"model": model.state_dict()}, args.weights)
    rng = np.random.default_rng(0)
    records = []
    for index in range(args.images or 3):
        path = folder / f"image_{index}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (*R50_SIZE, 3), dtype=np.uint8))
        records.append({"file_name": str(path), "image_id": index, "height": R50_SIZE[0], "width": R50_SIZE[1]})
    if R50_DATASET in DatasetCatalog.list():
        DatasetCatalog.remove(R50_DATASET)
    DatasetCatalog.register(R50_DATASET, lambda: records)
    args.config_file, args.dataset, args.calibration_dataset = R50_CONFIG, R50_DATASET, R50_DATASET
    args.calibration_images = min(args.calibration_images, len(records))


def eager(loaded: LoadedConfig) -> Callable[[int], Predict]:
    model: nn.Module = loaded.build_inference_model().to("cpu").eval()
    resize = loaded.test_resize()

    def load(threads: int) -> Predict:
        torch.set_num_threads(threads)

        def predict(bgr: np.ndarray) -> Instances:
            image = model_input(bgr, int(min(resize.short_edge_length)), int(resize.max_size))
            with torch.no_grad():
                return model([{"image": image, "height": bgr.shape[0], "width": bgr.shape[1]}])[0]["instances"]

        return predict

    return load


def exported(path: Path, precision: str = "float32") -> Callable[[int], Predict]:
    def load(threads: int) -> Predict:
        torch.set_num_threads(threads)
        runtime = ExportedMaskRCNN(path, num_threads=threads, precision=precision)
        return lambda bgr: full_image_instances(runtime.predict(bgr))

    return load


def export_all(args: argparse.Namespace, loaded: LoadedConfig) -> dict[str, Path]:
    """TorchScript, AOTInductor, ONNX and OpenVINO float32, and both INT8 models."""
    model = loaded.build_inference_model().to("cpu").float().eval()
    resize = loaded.test_resize()
    rules = InputRules.of(model, int(min(resize.short_edge_length)), int(resize.max_size))
    sample = torch.rand(3, rules.min_size_test, rules.min_size_test, generator=torch.Generator().manual_seed(0)) * 255
    keep_float = None if args.keep_float is None else tuple(args.keep_float)
    quantization = QuantizationRequest(args.calibration_dataset, args.calibration_images, keep_float)
    files = calibration_images("onnx", quantization, loaded.num_classes)
    paths, shared = {}, SharedGraphs()  # OpenVINO converted from the ONNX graph exported just before
    for fmt in sorted(args.formats, key=EXPORTED.index):
        request = ExportRequest(fmt, Path(args.output) / fmt, "tracing", loaded.class_names())
        paths[fmt] = export_model(model, sample, rules, request, shared)
        if fmt in QUANTIZED_FORMATS:
            paths[f"{fmt} int8"] = quantize_export(paths[fmt], files, rules, quantization)
    return paths


def runtimes(args: argparse.Namespace) -> list[Runtime]:
    overrides = ["MODEL.WEIGHTS", args.weights, *(R50_OPTS if args.model == "r50" else ())]
    stock = load_config(args.config_file, [*overrides, *FLOAT32_SETTINGS, *STOCK_SETTINGS])
    fp32 = load_config(args.config_file, [*overrides, *FLOAT32_SETTINGS])
    fast = load_config(R50_FAST_CONFIG if args.model == "r50" else args.config_file, [*overrides, *FAST_SETTINGS])
    paths = export_all(args, fp32)

    def exported_row(label: str, fmt: str, baseline: str, precision: str = "float32") -> list[Runtime]:
        return [Runtime(label, exported(paths[fmt], precision), baseline)] if fmt in paths else []

    rows = [
        Runtime("stock Detectron2 eager float32", eager(stock), "stock Detectron2 eager float32"),
        Runtime("eager float32", eager(fp32), "eager float32"),
        Runtime("eager fast (bfloat16 + channels-last)", eager(fast), "eager float32"),
        *exported_row("TorchScript float32", "torchscript", "eager float32"),
        *exported_row("AOTInductor float32", "aoti", "eager float32"),
        *exported_row("onnxruntime float32", "onnx", "eager float32"),
        *exported_row("onnxruntime INT8", "onnx int8", "onnxruntime float32"),
        *exported_row("OpenVINO float32", "openvino", "eager float32"),
        *exported_row("OpenVINO bfloat16", "openvino", "OpenVINO float32", "bfloat16"),
        *exported_row("OpenVINO INT8", "openvino int8", "OpenVINO float32"),
    ]
    if args.rows is not None:
        unknown = sorted(set(args.rows) - {row.label for row in rows})
        if unknown:
            raise SystemExit(f"unknown --rows {unknown}; the rows are {[row.label for row in rows]}")
        rows = [row for row in rows if row.label in args.rows]
    return rows


def measure(args: argparse.Namespace, rows: list[Runtime]) -> int:
    loaded = load_config(args.config_file, ["MODEL.WEIGHTS", args.weights])
    records = DatasetCatalog.get(args.dataset)[: args.images]
    images = [read_image(r["file_name"]) for r in records]
    for row in rows:
        for threads in args.threads:
            try:
                predict = row.load(threads)
            except ValueError as exc:  # bfloat16 on a CPU without it
                print(f"{row.label}: skipped ({exc})")
                break
            predict(images[0])  # warm-up: first calls compile or allocate
            times, outputs = [], []
            for bgr in images:
                start = time.perf_counter()
                outputs.append(predict(bgr))
                times.append(time.perf_counter() - start)
            row.latencies[threads] = statistics.median(times)
            if not row.ap and args.model == "demo":
                folder = Path(args.output) / f"eval_{row.label.split(' (')[0].replace(' ', '_')}"
                row.ap = evaluate(loaded, args.dataset, records, outputs, folder)
            print(f"{row.label}, {threads} threads: {row.latencies[threads] * 1e3:.1f} ms, AP {row.ap}", flush=True)
    return len(images)


def report(rows: list[Runtime], threads: list[int], num_images: int) -> None:
    by_label = {row.label: row for row in rows}
    fast = by_label.get("eager fast (bfloat16 + channels-last)")
    first = threads[0]
    columns = " | ".join(f"ms/image, {t} thr" for t in threads)
    print(f"\n{num_images} images; latency: median, uint8 image to full-image detections; speed-ups at {first} thread(s)\n")
    print(f"| runtime | box AP | mask AP | {columns} | vs its baseline | vs eager fast |")
    print("|---|---:|---:|" + "---:|" * len(threads) + "---|---:|")
    for row in rows:
        if not row.latencies:
            continue
        cells = " | ".join(f"{row.latencies[t] * 1e3:.1f}" if t in row.latencies else "-" for t in threads)
        base = by_label[row.baseline].latencies.get(first) if row.baseline in by_label else None
        versus = f"{base / row.latencies[first]:.2f}x {row.baseline}" if base and row.baseline != row.label else "-"
        fast_ratio = f"{fast.latencies[first] / row.latencies[first]:.2f}x" if fast and fast.latencies else "-"
        box_ap, mask_ap = (f"{row.ap[k]:.2f}" if k in row.ap else "-" for k in ("bbox", "segm"))
        print(f"| {row.label} | {box_ap} | {mask_ap} | {cells} | {versus} | {fast_ratio} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(run_header(), flush=True)
    if args.model == "r50":
        prepare_random_r50(args)
    rows = runtimes(args)
    num_images = measure(args, rows)
    report(rows, args.threads, num_images)


if __name__ == "__main__":
    main()
