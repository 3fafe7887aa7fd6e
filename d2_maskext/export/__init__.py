"""Deployment: a Mask R-CNN as a tensor-in, tensor-out graph in TorchScript, torch.export, AOTInductor or
ONNX form (``tools/export_model.py``), and the runtime that runs it on image files without Detectron2
(``runtime``, which imports neither Detectron2 nor the rest of the package). The ONNX translation
(``onnx_translation``) needs the optional ``export`` extra (onnx, onnxscript, onnxruntime) and is imported
only when ONNX is written."""

from .adapter import OUTPUT_NAMES, MaskRCNNExportAdapter, UnsupportedModelError, check_exportable
from .exporters import (
    EXPORT_METHODS,
    FORMATS,
    ExportRequest,
    InputRules,
    SharedGraphs,
    check_onnx_translatable,
    export_model,
)
from .runtime import ExportedMaskRCNN, Prediction, find_op_library, model_input, read_image

__all__ = [
    "EXPORT_METHODS",
    "FORMATS",
    "OUTPUT_NAMES",
    "ExportRequest",
    "ExportedMaskRCNN",
    "InputRules",
    "MaskRCNNExportAdapter",
    "Prediction",
    "SharedGraphs",
    "UnsupportedModelError",
    "check_exportable",
    "check_onnx_translatable",
    "export_model",
    "find_op_library",
    "model_input",
    "read_image",
]
