#!/usr/bin/env python
"""Export a trained Mask R-CNN for deployment: TorchScript, torch.export (.pt2), AOTInductor, ONNX or OpenVINO.

    python tools/export_model.py --config-file configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml \\
        --format exported_program --output output/export MODEL.WEIGHTS output/demo/model_final.pth
    python tools/export_model.py ... --format onnx            # runs in onnxruntime, no custom-op library
    python tools/export_model.py ... --format torchscript --export-method scripting
    python tools/export_model.py ... --format openvino --quantize int8 --calibration-dataset maskext_synth_train
    python tools/export_model.py ... --format exported_program onnx openvino   # one folder each, traced once

Writes the model (model.ts, model.pt2, model.aoti.pt2, model.onnx or model.xml + model.bin) and a JSON next
to it (inputs, outputs, class names, input size rules); with --quantize int8 also model.int8.onnx or
model.int8.xml and its JSON. Several formats go into one sub-folder each of --output (onnx/, openvino/...)
and share what they are converted from (the torch.export program, the ONNX graph). Run it with ``d2_maskext.export.ExportedMaskRCNN`` (d2_maskext/export/runtime.py, no Detectron2 needed). The interface
and the formats: docs/export.md.
"""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace
from pathlib import Path

import torch
from detectron2.utils.logger import setup_logger

from d2_maskext.cli.config_loading import load_config
from d2_maskext.export import (
    EXPORT_METHODS,
    FORMATS,
    ExportRequest,
    InputRules,
    SharedGraphs,
    export_model,
    model_input,
    read_image,
)
from d2_maskext.export.quantization import (
    QuantizationRequest,
    calibration_images,
    quantize_export,
)


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML or LazyConfig .py file")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=["exported_program"], help="one or more")
    parser.add_argument("--export-method", choices=EXPORT_METHODS, default="tracing", help="for torchscript")
    parser.add_argument("--output", default="output/export", help="output folder")
    parser.add_argument(
        "--sample-image", default=None, metavar="FILE", help="image to trace or export with (default: random)"
    )
    parser.add_argument("--quantize", choices=("int8",), default=None, help="also write an INT8 model (onnx, openvino)")
    parser.add_argument("--calibration-dataset", default=None, metavar="NAME", help="registered dataset to calibrate on")
    parser.add_argument("--calibration-images", type=int, default=100, metavar="N", help="images to calibrate on")
    parser.add_argument(
        "--keep-float", nargs="*", default=None, metavar="PREFIX",
        help="module prefixes whose layers stay float in INT8 (default: the format's, see docs/export.md)",
    )  # fmt: skip
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides, e.g. MODEL.WEIGHTS model.pth"
    )
    return parser.parse_args(argv)


def sample_input(path: str | None, rules: InputRules) -> torch.Tensor:
    """The model input for ``path`` resized as at test time, or a random image of the test size."""
    if path is None:
        size = min(max(rules.min_size_test, rules.min_side), rules.max_size_test)
        return torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    return model_input(read_image(path), rules.min_size_test, rules.max_size_test)


def check_weights(weights: str) -> None:
    """A clear error for a missing local weights file (URLs and ``detectron2://`` paths are fetched later)."""
    if not weights:
        raise SystemExit("no weights: pass MODEL.WEIGHTS path/to/model.pth (YAML) or train.init_checkpoint=... (lazy)")
    if "://" not in weights and not Path(weights).is_file():
        raise SystemExit(f"weights file not found: {weights}")


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Exports each ``--format``; returns the model file of each."""
    args = parse_args(argv)
    formats = sorted(set(args.format), key=FORMATS.index)  # the order in which they share their graphs
    setup_logger(name="d2_maskext")
    loaded = load_config(args.config_file, args.opts)
    if loaded.input_format != "BGR":
        raise SystemExit(f"{args.config_file}: export takes BGR images; the model expects {loaded.input_format}")
    check_weights(loaded.weights)
    keep_float = None if args.keep_float is None else tuple(args.keep_float)
    quantization = QuantizationRequest(args.calibration_dataset, args.calibration_images, keep_float)
    calibration_files: list[str] = []
    for fmt in formats if args.quantize else ():  # each format's needs are checked before anything is exported
        calibration_files = calibration_images(fmt, quantization, loaded.num_classes)
    model = loaded.build_inference_model().to("cpu").float().eval()
    resize = loaded.test_resize()
    short_edges = resize.short_edge_length
    rules = InputRules.of(model, int(min(short_edges)), int(resize.max_size))
    image, shared, paths = sample_input(args.sample_image, rules), SharedGraphs(), {}
    for fmt in formats:
        output = Path(args.output) / fmt if len(formats) > 1 else Path(args.output)
        request = ExportRequest(fmt, output, args.export_method, loaded.class_names())
        paths[fmt] = path = export_model(model, image, rules, request, shared)
        print(f"model:    {path}")
        print(f"metadata: {path.with_suffix('.json')}")
    for path in paths.values() if args.quantize else ():
        print(f"int8:     {quantize_export(path, calibration_files, rules, quantization)}")
    return paths


if __name__ == "__main__":
    sys.exit(main() and 0)
