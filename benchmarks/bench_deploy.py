"""Accuracy and CPU latency of every deployment runtime, on the trained demo model and its val split.

Rows: plugin eager float32, plugin eager fast settings (bfloat16 + channels-last), TorchScript, onnxruntime
float32 and INT8, OpenVINO float32, bfloat16 (where the CPU computes in it) and INT8. Each row is timed from
the uint8 image to full-image detections (resize, network, box scaling, mask pasting: what a deployer waits
for), median over the images, at each thread count; box and mask AP come from the first thread count's
detections through the plugin's evaluator. INT8 models are calibrated on ``--calibration-dataset`` as
``tools/export_model.py --quantize int8`` does. Other jobs on a shared CPU move absolute times: compare the
ratios within one run.

    python benchmarks/bench_deploy.py                          # demo model, 150 val images, 1 and 2 threads
    python benchmarks/bench_deploy.py --images 20 --threads 1  # a quick run
    python benchmarks/bench_deploy.py --rows "onnxruntime INT8" "OpenVINO INT8" --keep-float   # all layers INT8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from bench_export import DEMO_CONFIG, FAST_SETTINGS, FLOAT32_SETTINGS, evaluate, full_image_instances
from detectron2.data import DatasetCatalog
from detectron2.structures import Instances
from machine import run_header
from torch import nn

from d2_maskext.cli.config_loading import LoadedConfig, load_config
from d2_maskext.export import ExportedMaskRCNN, ExportRequest, InputRules, SharedGraphs, export_model
from d2_maskext.export.quantization import QuantizationRequest, calibration_images, quantize_export
from d2_maskext.export.runtime import model_input, read_image

DEMO_WEIGHTS = "output/demo/model_final.pth"
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
    parser.add_argument("--output", default="output/bench_deploy", help="where exports and evaluations go")
    return parser.parse_args(argv)


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
    """TorchScript, ONNX and OpenVINO float32, and both INT8 models."""
    model = loaded.build_inference_model().to("cpu").float().eval()
    resize = loaded.test_resize()
    rules = InputRules.of(model, int(min(resize.short_edge_length)), int(resize.max_size))
    sample = torch.rand(3, rules.min_size_test, rules.min_size_test, generator=torch.Generator().manual_seed(0)) * 255
    keep_float = None if args.keep_float is None else tuple(args.keep_float)
    quantization = QuantizationRequest(args.calibration_dataset, args.calibration_images, keep_float)
    files = calibration_images("onnx", quantization, loaded.num_classes)
    paths, shared = {}, SharedGraphs()  # OpenVINO converted from the ONNX graph exported just before
    for fmt in ("torchscript", "onnx", "openvino"):
        request = ExportRequest(fmt, Path(args.output) / fmt, "tracing", loaded.class_names())
        paths[fmt] = export_model(model, sample, rules, request, shared)
        if fmt != "torchscript":
            paths[f"{fmt} int8"] = quantize_export(paths[fmt], files, rules, quantization)
    return paths


def runtimes(args: argparse.Namespace) -> list[Runtime]:
    overrides = ["MODEL.WEIGHTS", args.weights]
    fp32 = load_config(args.config_file, [*overrides, *FLOAT32_SETTINGS])
    fast = load_config(args.config_file, [*overrides, *FAST_SETTINGS])
    paths = export_all(args, fp32)
    rows = [
        Runtime("eager float32", eager(fp32), "eager float32"),
        Runtime("eager fast (bfloat16 + channels-last)", eager(fast), "eager float32"),
        Runtime("TorchScript float32", exported(paths["torchscript"]), "eager float32"),
        Runtime("onnxruntime float32", exported(paths["onnx"]), "eager float32"),
        Runtime("onnxruntime INT8", exported(paths["onnx int8"]), "onnxruntime float32"),
        Runtime("OpenVINO float32", exported(paths["openvino"]), "eager float32"),
        Runtime("OpenVINO bfloat16", exported(paths["openvino"], "bfloat16"), "OpenVINO float32"),
        Runtime("OpenVINO INT8", exported(paths["openvino int8"]), "OpenVINO float32"),
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
            if not row.ap:
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
    rows = runtimes(args)
    num_images = measure(args, rows)
    report(rows, args.threads, num_images)


if __name__ == "__main__":
    main()
