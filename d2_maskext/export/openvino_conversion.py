"""The ONNX export converted to an OpenVINO IR (``model.xml`` + ``model.bin``).

OpenVINO reads the ONNX graph that ``--format onnx`` writes (standard operators only, ``RoiAlign`` and
``NonMaxSuppression`` included) with dynamic height and width; converting that graph was measured to give the
same detections as the ONNX file, so the IR is made from it rather than from a second export path. Weights stay
float32 in the ``.bin`` (``compress_to_fp16=False``): the runtime picks the inference precision, not the file.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

__all__ = ["OPENVINO_INSTALL_HINT", "convert_onnx_to_openvino", "require_openvino"]

OPENVINO_INSTALL_HINT = "pip install -r requirements-export.txt (or pip install -e '.[export]')"


def require_openvino() -> ModuleType:
    """The ``openvino`` module, or an error that says how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise ImportError(f"--format openvino needs the openvino package: {OPENVINO_INSTALL_HINT}") from exc
    return openvino


def convert_onnx_to_openvino(onnx_path: Path, xml_path: Path) -> Path:
    """Writes the OpenVINO IR of ``onnx_path`` to ``xml_path`` (and its ``.bin``); returns ``xml_path``."""
    openvino = require_openvino()
    model = openvino.convert_model(str(onnx_path))
    openvino.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path
