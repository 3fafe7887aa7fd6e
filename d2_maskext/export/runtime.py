"""Runs a Mask R-CNN exported by ``tools/export_model.py`` on image files, with torch, onnxruntime or OpenVINO
only.

The exported model takes Detectron2's model input (float32 ``[3, H, W]``, BGR, 0–255, already resized) and
returns ``boxes``, ``scores``, ``classes`` and ``masks`` (``[N, 1, M, M]`` probabilities). This module does
what Detectron2's ``DefaultPredictor`` and ``detector_postprocess`` do around it: resize the shortest edge
as the model's test config says, scale the boxes back, drop empty ones and paste the masks into boolean
image masks. The JSON written next to the model says how.

Importing anything under ``d2_maskext`` runs the package's ``__init__``, which imports Detectron2. This file
therefore imports nothing of the package: on a machine without Detectron2, load it by path (or run it as a
script); it loads the mask-pasting code from ``d2_maskext/layers/paste_masks.py`` (pure torch) the same way.

    python d2_maskext/export/runtime.py output/export/model.pt2 image.jpg
    python d2_maskext/export/runtime.py output/export/model.xml image.jpg --precision bfloat16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _load_paste_masks() -> Callable[..., Tensor]:
    """``d2_maskext.layers.paste_masks.paste_masks``, loaded from its file without importing the package."""
    spec = importlib.util.spec_from_file_location("_d2_maskext_paste_masks", PACKAGE_DIR / "layers" / "paste_masks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.paste_masks


paste_masks = _load_paste_masks()
__all__ = [
    "PRECISIONS",
    "ExportedMaskRCNN",
    "Prediction",
    "find_op_library",
    "model_input",
    "paste_masks",
    "read_image",
    "resized_shape",
]


# Formats of standard operators only: no torchvision or plugin op library to load.
STANDARD_OPERATOR_FORMATS = ("onnx", "openvino")
# Inference precisions; bfloat16 is OpenVINO's INFERENCE_PRECISION_HINT, on CPUs that compute in it.
PRECISIONS = ("float32", "bfloat16")
_OPENVINO_PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16"}


@dataclass
class Prediction:
    """Detections in the pixels of the original image."""

    boxes: Tensor  # [N, 4] float32, x1 y1 x2 y2
    scores: Tensor  # [N] float32
    classes: Tensor  # [N] int64
    masks: Tensor  # [N, H, W] bool
    class_names: list[str]


def find_op_library() -> Path:
    """The plugin's compiled ``d2_maskext/_C`` library, next to this package (found without importing it)."""
    found = sorted(PACKAGE_DIR.glob("_C*.so")) + sorted(PACKAGE_DIR.glob("_C*.pyd"))
    if found:
        return found[0]
    raise FileNotFoundError(
        "the model calls d2_maskext::roi_align but no compiled d2_maskext/_C library was found; "
        "pass op_library=<path to _C*.so> or export with --format onnx"
    )


def read_image(path: str | Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 BGR image, EXIF orientation applied (as Detectron2's ``read_image``)."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the image ({exc})") from exc
    return np.ascontiguousarray(rgb[:, :, ::-1])


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Detectron2's ``ResizeShortestEdge`` at test time: shortest edge to ``min_size``, longest at most
    ``max_size``, rounded to the nearest pixel."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def model_input(bgr: np.ndarray, min_size_test: int, max_size_test: int) -> Tensor:
    """Float32 ``[3, h, w]`` model input of a ``(H, W, 3)`` uint8 BGR image, resized as at test time (PIL
    bilinear, as Detectron2's ``ResizeTransform``)."""
    height, width = bgr.shape[:2]
    new_height, new_width = resized_shape(height, width, min_size_test, max_size_test)
    if (new_height, new_width) != (height, width):
        bgr = np.asarray(Image.fromarray(bgr).resize((new_width, new_height), Image.BILINEAR))
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1))).float()


def _load_openvino(path: Path, num_threads: int | None, precision: str) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """The IR compiled for the CPU at ``precision`` (always set: OpenVINO's default is bfloat16 on AMX CPUs)."""
    import openvino

    core = openvino.Core()
    if precision == "bfloat16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise ValueError(f"{path}: this CPU does not compute in bfloat16 (OpenVINO lists no BF16); use float32")
    config = {"INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if num_threads is not None:
        config["INFERENCE_NUM_THREADS"] = num_threads
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()

    def run_openvino(image: Tensor) -> tuple[Tensor, ...]:
        outputs = request.infer({"image": image.numpy()})
        return tuple(torch.from_numpy(outputs[o].copy()) for o in compiled.outputs)

    return run_openvino


def _load_backend(
    path: Path, fmt: str, num_threads: int | None, precision: str
) -> Callable[[Tensor], tuple[Tensor, ...]]:
    if precision != "float32" and fmt != "openvino":
        raise ValueError(f"{path}: precision {precision!r} is offered for OpenVINO IRs only; {fmt} runs float32")
    if fmt == "openvino":
        return _load_openvino(path, num_threads, precision)
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]

        def run_onnx(image: Tensor) -> tuple[Tensor, ...]:
            outputs = session.run(names, {"image": image.numpy()})
            return tuple(torch.from_numpy(o) for o in outputs)

        return run_onnx
    if fmt == "exported_program":
        return torch.export.load(str(path)).module()
    if fmt == "aoti":
        return torch._inductor.aoti_load_package(str(path))
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    raise ValueError(f"{path}: unknown export format {fmt!r}")


class ExportedMaskRCNN:
    """An exported model and its JSON: ``model(image_tensor)`` runs the raw graph, ``predict_file`` a file.

    ``num_threads`` caps onnxruntime's and OpenVINO's threads (torch formats follow ``torch.set_num_threads``);
    ``precision`` (one of :data:`PRECISIONS`) is OpenVINO's inference precision. An INT8 export is run like
    its float32 form: its quantized layers compute in int8 whatever ``precision`` says.
    """

    def __init__(
        self,
        path: str | Path,
        op_library: str | Path | None = None,
        num_threads: int | None = None,
        precision: str = "float32",
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
        self.path = Path(path)
        metadata_path = self.path.with_suffix(".json")
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no exported model there")
        if not metadata_path.is_file():
            raise FileNotFoundError(f"{metadata_path}: the export's JSON is missing (written by tools/export_model.py)")
        self.metadata = json.loads(metadata_path.read_text())
        fmt = self.metadata["format"]
        if fmt not in STANDARD_OPERATOR_FORMATS:
            import torchvision  # noqa: F401  (registers torchvision::nms and roi_align, which the graph calls)
        if self.metadata.get("custom_ops") and fmt not in STANDARD_OPERATOR_FORMATS and not hasattr(torch.ops.d2_maskext, "roi_align"):
            torch.ops.load_library(str(op_library or find_op_library()))
        self._run = _load_backend(self.path, fmt, num_threads, precision)

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata.get("class_names", []))

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(boxes, scores, classes, masks)`` of one float32 ``[3, H, W]`` BGR 0–255 model input."""
        rules = self.metadata["input"]
        if image.dtype != torch.float32 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a float32 [3, H, W] image, got {image.dtype} {list(image.shape)}")
        if min(image.shape[1:]) < rules["min_side"] or max(image.shape[1:]) > rules["max_side"]:
            raise ValueError(
                f"image size {list(image.shape[1:])} is outside the exported range "
                f"[{rules['min_side']}, {rules['max_side']}] per side"
            )
        with torch.no_grad():
            boxes, scores, classes, masks = self._run(image.contiguous())
        return boxes, scores, classes, masks

    def predict(self, bgr: np.ndarray, mask_threshold: float = 0.5) -> Prediction:
        """Detections for a ``(H, W, 3)`` uint8 BGR image, boxes and masks in its own pixels."""
        rules = self.metadata["input"]
        height, width = bgr.shape[:2]
        image = model_input(bgr, rules["min_size_test"], rules["max_size_test"])
        new_height, new_width = image.shape[1:]
        boxes, scores, classes, masks = self(image)
        scale = torch.tensor([width / new_width, height / new_height] * 2)
        boxes = boxes * scale
        boxes = torch.stack(
            [boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height), boxes[:, 2].clamp(0, width),
             boxes[:, 3].clamp(0, height)], dim=1
        )  # fmt: skip
        keep = ((boxes[:, 2:] - boxes[:, :2]) > 0).all(dim=1)
        boxes, scores, classes, masks = boxes[keep], scores[keep], classes[keep], masks[keep]
        pasted = paste_masks(masks[:, 0], boxes, (height, width), mask_threshold)
        return Prediction(boxes, scores, classes.long(), pasted, self.class_names)

    def predict_file(self, path: str | Path, mask_threshold: float = 0.5) -> Prediction:
        """:meth:`predict` on an image file."""
        return self.predict(read_image(path), mask_threshold)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run an exported Mask R-CNN on image files.")
    parser.add_argument(
        "model", help="model.ts, model.pt2, model.aoti.pt2, model.onnx or model.xml (its JSON next to it)"
    )
    parser.add_argument("images", nargs="+")
    parser.add_argument("--op-library", default=None, help="path to d2_maskext/_C*.so (default: found)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help="OpenVINO inference precision")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime/OpenVINO threads (default: theirs)")
    args = parser.parse_args(argv)
    model = ExportedMaskRCNN(args.model, args.op_library, args.threads, args.precision)
    for path in args.images:
        prediction = model.predict_file(path)
        print(f"{path}: {len(prediction.scores)} instances")
        for box, score, label, mask in zip(prediction.boxes, prediction.scores, prediction.classes, prediction.masks):
            name = prediction.class_names[label] if label < len(prediction.class_names) else str(int(label))
            print(f"  {name:>12} {float(score):.3f} box {[round(v, 1) for v in box.tolist()]} mask {int(mask.sum())} px")


if __name__ == "__main__":
    sys.exit(main())
