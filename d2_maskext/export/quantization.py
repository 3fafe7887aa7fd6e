"""INT8 post-training quantization of an ONNX or OpenVINO export, calibrated on images of a registered dataset.

Only the convolutions and fully connected layers are quantized, in both runtimes: the tools' default op lists
go further (NNCF's quantized the box areas that pick the FPN level and the boxes the mask pooler reads, which
took the demo's mask AP to 0). ONNX: onnxruntime's ``quantize_static`` in QDQ form (uint8 activations,
per-channel int8 weights). OpenVINO: NNCF's ``nncf.quantize`` on the IR, every other op type in its
``ignored_scope``. The layers under :data:`KEEP_FLOAT` stay float (docs/export.md gives the measurements).
Calibration images go through the runtime's own preprocessing (``runtime.model_input``), so the ranges are
those the deployed model sees. The INT8 model is written next to the float32 one
(``model.int8.onnx`` / ``model.int8.xml``) with its own JSON; the float32 files are not touched.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from tqdm import tqdm

from ..utils import atomic_open
from .exporters import InputRules
from .openvino_conversion import OPENVINO_INSTALL_HINT
from .runtime import model_input, read_image

__all__ = [
    "KEEP_FLOAT",
    "QUANTIZED_FORMATS",
    "CalibrationImages",
    "QuantizationRequest",
    "calibration_images",
    "int8_path",
    "quantize_export",
]

logger = logging.getLogger(__name__)

QUANTIZED_FORMATS = ("onnx", "openvino")
# Module prefixes whose weight layers stay float, per format. Both keep the two output layers (box deltas and
# class scores, mask logits: under 1% of the multiply-adds). OpenVINO also keeps the mask head's first conv:
# NNCF's calibrated range for the pooled mask features (its input) came out NaN, which took mask AP to 0;
# onnxruntime calibrates that input correctly, and quantizing it there saves 8% of the latency.
KEEP_FLOAT = {
    "onnx": ("roi_heads.box_predictor", "roi_heads.mask_head.predictor"),
    "openvino": ("roi_heads.box_predictor", "roi_heads.mask_head.mask_fcn1", "roi_heads.mask_head.predictor"),
}
_WEIGHT_OPS_ONNX = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_WEIGHT_OPS_OPENVINO = ("Convolution", "ConvolutionBackpropData", "GroupConvolution", "MatMul")
# The adapter holds the model as ``model``, so the exported weights are named ``model.<module path>.weight``.
_ADAPTER_PREFIX = "model."
CALIBRATION_SEED = 0


@dataclass
class QuantizationRequest:
    """INT8 calibrated on ``num_images`` images of the registered dataset ``dataset``; ``keep_float`` lists
    module prefixes (``roi_heads.box_predictor``) whose weight layers stay float (``None``: the format's
    :data:`KEEP_FLOAT`)."""

    dataset: str | None
    num_images: int
    keep_float: tuple[str, ...] | None = None

    def float_layers(self, fmt: str) -> tuple[str, ...]:
        return KEEP_FLOAT[fmt] if self.keep_float is None else self.keep_float


def int8_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (its JSON: ``model.int8.json``)."""
    return path.with_name(f"{path.stem}.int8{path.suffix}")


def _require_quantizer(fmt: str) -> None:
    try:
        if fmt == "openvino":
            import nncf  # noqa: F401
            import openvino  # noqa: F401
        else:
            import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        package = "nncf and openvino" if fmt == "openvino" else "onnxruntime"
        raise ImportError(f"--quantize int8 --format {fmt} needs {package}: {OPENVINO_INSTALL_HINT}") from exc


def calibration_images(fmt: str, request: QuantizationRequest, num_classes: int) -> list[str]:
    """The image files to calibrate on, after checking everything the quantization needs (before any export).

    ``num_images`` files drawn with a fixed seed from the dataset (all of them if it has fewer, with a warning).
    """
    if fmt not in QUANTIZED_FORMATS:
        raise ValueError(f"--quantize int8 is offered for --format {' or '.join(QUANTIZED_FORMATS)}, not {fmt}")
    if not request.dataset:
        raise ValueError("--quantize int8 needs --calibration-dataset NAME (a registered dataset of the model's classes)")
    if request.num_images < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {request.num_images}")
    _require_quantizer(fmt)
    if request.dataset not in DatasetCatalog.list():
        raise ValueError(f"calibration dataset '{request.dataset}' is not registered")
    dicts = DatasetCatalog.get(request.dataset)
    classes = MetadataCatalog.get(request.dataset).get("thing_classes")
    if classes is not None and len(classes) != num_classes:
        raise ValueError(
            f"calibration dataset '{request.dataset}' has {len(classes)} classes but the model predicts {num_classes}"
        )
    files = [d["file_name"] for d in dicts]
    if not files:
        raise ValueError(f"calibration dataset '{request.dataset}' has no images")
    if len(files) < request.num_images:
        logger.warning(
            "calibration dataset '%s' has %d images, fewer than the %d asked for; using all of them",
            request.dataset, len(files), request.num_images,
        )  # fmt: skip
    return sorted(random.Random(CALIBRATION_SEED).sample(files, min(request.num_images, len(files))))


class CalibrationImages:
    """Model inputs of image files, read one at a time on each pass (memory stays at one image)."""

    def __init__(self, files: Sequence[str], rules: InputRules):
        self.files = list(files)
        self.rules = rules

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[np.ndarray]:
        for index, file in enumerate(tqdm(self.files, desc="calibration", unit="img")):
            try:
                bgr = read_image(file)
            except ValueError as exc:
                raise ValueError(f"calibration image {index}: {exc}") from exc
            yield model_input(bgr, self.rules.min_size_test, self.rules.max_size_test).numpy()


def _check_all_matched(prefixes: Sequence[str], matched: dict[str, list[str]], path: Path) -> None:
    missing = [p for p in prefixes if not matched[p]]
    if missing:
        raise ValueError(f"{path}: no weight layer under {missing} (--keep-float takes module prefixes)")


def _onnx_float_nodes(path: Path, prefixes: Sequence[str]) -> list[str]:
    import onnx

    matched: dict[str, list[str]] = {p: [] for p in prefixes}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in _WEIGHT_OPS_ONNX and len(node.input) > 1:
            for prefix in prefixes:
                if node.input[1].startswith(f"{_ADAPTER_PREFIX}{prefix}."):
                    matched[prefix].append(node.name)
    _check_all_matched(prefixes, matched, path)
    return [name for names in matched.values() for name in names]


def _openvino_ignored_scope(model, prefixes: Sequence[str], path: Path):
    """NNCF's ignored scope: the weight layers under ``prefixes`` and every op type other than weight layers."""
    import nncf

    types = sorted({op.get_type_name() for op in model.get_ordered_ops()} - set(_WEIGHT_OPS_OPENVINO))
    return nncf.IgnoredScope(names=_openvino_float_ops(model, prefixes, path), types=types, validate=False)


def _openvino_float_ops(model, prefixes: Sequence[str], path: Path) -> list[str]:
    matched: dict[str, list[str]] = {p: [] for p in prefixes}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in _WEIGHT_OPS_OPENVINO:
            continue
        weight = op.input(1).get_source_output().get_node().get_friendly_name()
        for prefix in prefixes:
            if weight.startswith(f"{_ADAPTER_PREFIX}{prefix}."):
                matched[prefix].append(op.get_friendly_name())
    _check_all_matched(prefixes, matched, path)
    return [name for names in matched.values() for name in names]


def _quantize_onnx(path: Path, output: Path, images: CalibrationImages, keep_float: Sequence[str]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._images = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self._images, None)
            return None if image is None else {"image": image}

    quantize_static(
        str(path),
        str(output),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(_WEIGHT_OPS_ONNX),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=_onnx_float_nodes(path, keep_float),
    )


def _quantize_openvino(path: Path, output: Path, images: CalibrationImages, keep_float: Sequence[str]) -> None:
    import nncf
    import openvino

    model = openvino.Core().read_model(str(path))
    dataset = nncf.Dataset(images, lambda image: {"image": image})
    ignored = _openvino_ignored_scope(model, keep_float, path)
    quantized = nncf.quantize(model, dataset, subset_size=len(images), ignored_scope=ignored)
    openvino.save_model(quantized, str(output), compress_to_fp16=False)


def quantize_export(path: Path, files: Sequence[str], rules: InputRules, request: QuantizationRequest) -> Path:
    """Writes the INT8 form of the float32 export ``path`` (its JSON next to it) and returns its path."""
    metadata = json.loads(path.with_suffix(".json").read_text())
    fmt = metadata["format"]
    output = int8_path(path)
    images = CalibrationImages(files, rules)
    if fmt == "onnx":
        _quantize_onnx(path, output, images, request.float_layers(fmt))
    elif fmt == "openvino":
        _quantize_openvino(path, output, images, request.float_layers(fmt))
    else:
        raise ValueError(f"{path}: --quantize int8 is offered for {QUANTIZED_FORMATS}, not {fmt}")
    metadata["model_file"] = output.name
    metadata["quantization"] = {
        "precision": "int8",
        "tool": "onnxruntime quantize_static (QDQ)" if fmt == "onnx" else "nncf.quantize",
        "calibration_dataset": request.dataset,
        "calibration_images": len(files),
        "float_layers": list(request.float_layers(fmt)),
    }
    with atomic_open(output.with_suffix(".json"), "w") as f:
        json.dump(metadata, f, indent=2)
    logger.info("wrote the INT8 model %s (calibrated on %d images of %s)", output, len(files), request.dataset)
    return output
