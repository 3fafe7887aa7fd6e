"""Writes a Mask R-CNN in one deployment format, with a JSON that says how to feed it and read its outputs.

Formats: ``torchscript`` (tracing or scripting), ``exported_program`` (``torch.export``, dynamic height and
width, ``.pt2``), ``aoti`` (an AOTInductor package of that program), ``onnx`` (the dynamo-based
exporter, ``d2_maskext::roi_align`` translated to standard operators) and ``openvino`` (that ONNX graph as an
OpenVINO IR). Formats written in one run share their graphs (:class:`SharedGraphs`): tracing through
``torch.export`` and the ONNX conversion take most of an export's time.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from detectron2.layers import ROIAlign
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from torch import Tensor, nn
from torchvision.ops import RoIPool

from ..utils import atomic_open
from .adapter import OUTPUT_NAMES, MaskRCNNExportAdapter, UnsupportedModelError

__all__ = [
    "EXPORT_METHODS",
    "FORMATS",
    "ExportRequest",
    "InputRules",
    "SharedGraphs",
    "check_onnx_translatable",
    "export_model",
]

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "exported_program", "aoti", "onnx", "openvino")
EXPORT_METHODS = ("tracing", "scripting")
FILE_NAMES = {
    "torchscript": "model.ts",
    "exported_program": "model.pt2",
    "aoti": "model.aoti.pt2",
    "onnx": "model.onnx",
    "openvino": "model.xml",
}
MAX_SIDE = 4096
# Inductor options of the AOTInductor package. Its layout optimization (convolutions switched to channels-last)
# miscompiles stacked convolutions on a data-dependent batch, such as the mask head on the real detections: the
# package gave masks up to 0.89 from eager in probability on the demo model (torch 2.14.1, CPU; docs/export.md has
# the plugin-free reproduction). Without it the masks equal eager's and the package is no slower.
AOTI_INDUCTOR_OPTIONS = {"layout_optimization": False}
CUSTOM_OP = "d2_maskext::roi_align"
# Poolers whose level poolers have an ONNX translation (torchvision's ops in onnxscript, the plugin's here).
ONNX_LEVEL_POOLERS = (ROIAlign, RoIPool)


@dataclass
class InputRules:
    """How images become model inputs: Detectron2's test-time resize, and the sizes the graph accepts."""

    min_size_test: int
    max_size_test: int
    size_divisibility: int
    min_side: int
    max_side: int = MAX_SIDE

    @classmethod
    def of(cls, model: GeneralizedRCNN, min_size_test: int, max_size_test: int) -> InputRules:
        # Each side must give the coarsest feature level two cells: a size of one is specialized by torch.export.
        coarsest = max(shape.stride for shape in model.backbone.output_shape().values())
        return cls(min_size_test, max_size_test, model.backbone.size_divisibility, coarsest + 1)


@dataclass
class ExportRequest:
    """What ``export_model`` writes: ``fmt`` with ``method`` into ``output_dir``."""

    fmt: str
    output_dir: Path
    method: str = "tracing"
    class_names: list[str] = field(default_factory=list)


@dataclass
class SharedGraphs:
    """What one export run builds once for all its formats: the ``torch.export`` program (behind
    ``exported_program``, ``aoti`` and ``onnx``) and the ONNX file (behind ``onnx`` and ``openvino``)."""

    program: torch.export.ExportedProgram | None = None
    onnx_file: Path | None = None


def check_onnx_translatable(model: nn.Module) -> None:
    """Raises :class:`UnsupportedModelError` for a pooler whose RoI operator has no ONNX translation."""
    for name, module in model.named_modules():
        if not isinstance(module, ROIPooler):
            continue
        for level_pooler in module.level_poolers:
            if not isinstance(level_pooler, ONNX_LEVEL_POOLERS):
                raise UnsupportedModelError(
                    f"{name}: {type(level_pooler).__name__} pooling has no ONNX translation; use POOLER_TYPE "
                    "ROIAlign, ROIAlignV2 or ROIPool, or another --format"
                )


def _dynamic_image_shape(rules: InputRules) -> dict[str, dict[int, torch.export.Dim]]:
    height = torch.export.Dim("height", min=rules.min_side, max=rules.max_side)
    width = torch.export.Dim("width", min=rules.min_side, max=rules.max_side)
    return {"image": {1: height, 2: width}}


def _export_program(
    adapter: MaskRCNNExportAdapter, image: Tensor, rules: InputRules, shared: SharedGraphs
) -> torch.export.ExportedProgram:
    if shared.program is None:
        with torch.no_grad():
            shared.program = torch.export.export(adapter, (image,), dynamic_shapes=_dynamic_image_shape(rules))
    return shared.program


def _program_custom_ops(program: torch.export.ExportedProgram) -> list[str]:
    targets = {
        node.target.name().split(".")[0]
        for node in program.graph.nodes
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
    }
    return sorted(t for t in targets if t.startswith("d2_maskext::"))


def _torchscript(model: GeneralizedRCNN, adapter: MaskRCNNExportAdapter, image: Tensor, method: str, path: Path):
    if method == "scripting":
        from .scripting import script_model

        module = script_model(model)
    else:
        with torch.no_grad():
            module = torch.jit.trace(adapter, (image,), check_trace=False)
    torch.jit.save(module, str(path))
    return [CUSTOM_OP] if CUSTOM_OP in str(module.inlined_graph) else []


def _onnx(adapter: MaskRCNNExportAdapter, image: Tensor, rules: InputRules, path: Path, shared: SharedGraphs) -> list[str]:
    """The program of :func:`_export_program` (dynamic height and width) converted to ONNX."""
    check_onnx_translatable(adapter.model)
    from .onnx_translation import ONNX_OPSET, roi_align_translations  # needs the optional onnxscript

    program = _export_program(adapter, image, rules, shared)
    with torch.no_grad():
        onnx_program = torch.onnx.export(
            program,
            (image,),
            dynamo=True,
            opset_version=ONNX_OPSET,
            custom_translation_table=roi_align_translations(),
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
        )
    onnx_program.save(str(path))
    shared.onnx_file = path
    return []


def _openvino(
    adapter: MaskRCNNExportAdapter, image: Tensor, rules: InputRules, path: Path, shared: SharedGraphs
) -> list[str]:
    from .openvino_conversion import convert_onnx_to_openvino

    if shared.onnx_file is not None:
        convert_onnx_to_openvino(shared.onnx_file, path)
        return []
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / FILE_NAMES["onnx"]
        _onnx(adapter, image, rules, onnx_path, shared)
        convert_onnx_to_openvino(onnx_path, path)
    shared.onnx_file = None  # removed with the temporary folder
    return []


def _metadata(request: ExportRequest, rules: InputRules, file_name: str, custom_ops: list[str]) -> dict:
    return {
        "format": request.fmt,
        "export_method": request.method if request.fmt == "torchscript" else None,
        "model_file": file_name,
        "input": {
            "name": "image",
            "dtype": "float32",
            "shape": [3, "H", "W"],
            "channels": "BGR",
            "value_range": [0, 255],
            **rules.__dict__,
        },
        "outputs": [
            {"name": "boxes", "dtype": "float32", "shape": ["N", 4], "meaning": "x1, y1, x2, y2 in input pixels"},
            {"name": "scores", "dtype": "float32", "shape": ["N"]},
            {"name": "classes", "dtype": "int64", "shape": ["N"], "meaning": "index into class_names"},
            {"name": "masks", "dtype": "float32", "shape": ["N", 1, "M", "M"], "meaning": "probabilities before pasting"},
        ],
        "class_names": list(request.class_names),
        "custom_ops": custom_ops,
        "mask_threshold": 0.5,
    }


def export_model(
    model: GeneralizedRCNN, image: Tensor, rules: InputRules, request: ExportRequest, shared: SharedGraphs | None = None
) -> Path:
    """Writes ``model`` (eval mode, float32) as ``request.fmt`` into ``request.output_dir`` with its JSON;
    ``image`` is a sample model input (float32 ``[3, H, W]``, BGR 0–255). Returns the model file.

    Exporting one model (same ``image`` and ``rules``) in several formats with the same ``shared``, in the order
    of :data:`FORMATS`, traces and converts each graph once."""
    if request.fmt not in FORMATS:
        raise ValueError(f"unknown export format {request.fmt!r}; choose one of {FORMATS}")
    if request.method not in EXPORT_METHODS:
        raise ValueError(f"unknown export method {request.method!r}; choose one of {EXPORT_METHODS}")
    if request.method == "scripting" and request.fmt != "torchscript":
        raise ValueError(f"--export-method scripting makes TorchScript; --format {request.fmt} takes tracing")
    if min(image.shape[1:]) < rules.min_side or max(image.shape[1:]) > rules.max_side:
        raise ValueError(
            f"sample image size {list(image.shape[1:])} is outside [{rules.min_side}, {rules.max_side}] per side"
        )
    if request.fmt == "openvino":
        from .openvino_conversion import require_openvino

        require_openvino()  # before the export, which takes a while
    shared = SharedGraphs() if shared is None else shared
    adapter = MaskRCNNExportAdapter(model)
    request.output_dir.mkdir(parents=True, exist_ok=True)
    path = request.output_dir / FILE_NAMES[request.fmt]
    if request.fmt == "torchscript":
        custom_ops = _torchscript(model, adapter, image, request.method, path)
    elif request.fmt == "onnx":
        custom_ops = _onnx(adapter, image, rules, path, shared)
    elif request.fmt == "openvino":
        custom_ops = _openvino(adapter, image, rules, path, shared)
    else:
        program = _export_program(adapter, image, rules, shared)
        custom_ops = _program_custom_ops(program)
        if request.fmt == "exported_program":
            torch.export.save(program, str(path))
        else:
            path.unlink(missing_ok=True)
            with torch._inductor.config.patch(AOTI_INDUCTOR_OPTIONS):
                torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    metadata = _metadata(request, rules, path.name, custom_ops)
    with atomic_open(path.with_suffix(".json"), "w") as f:
        json.dump(metadata, f, indent=2)
    logger.info("exported %s to %s", request.fmt, path)
    return path
